"""Orbax checkpoints of the train state and, optionally, the Grain iterator position.

``Checkpointer.save`` is asynchronous (arrays are copied to host, then written in the
background) and saves every ``save_every`` steps; ``force=True`` saves regardless (the final
step). ``restore`` loads the latest (or a given) step onto the shardings carried by an
abstract state (ShapeDtypeStructs with ``sharding``, e.g. from
``state.abstract_with_shardings``), so a checkpoint written on one mesh restores bit-exactly
onto another. A Grain iterator passed to ``restore`` is set to the saved position in place.

Usage::

  ckpt = Checkpointer(workdir / "ckpt", save_every=1000)
  for step ...:
    ckpt.save(step, state, data_iter)
  ckpt.save(step, state, data_iter, force=True)
  ckpt.wait_until_finished()

Checksums: when Orbax has finished a step (its post-finalization callback, or at once for a
synchronous save), process 0 writes ``<step>/checksums.json`` (size and crc32 of every file,
``files.write_manifest``). ``restore`` verifies the step first: without ``step`` it takes the
newest intact checkpoint, logging one warning line per corrupt newer one it skips; a given
step that is corrupt, or no intact step at all, raises ``files.CorruptFileError`` naming the
file. ``quarantine_corrupt`` (the trainer, before resuming) moves corrupt newer steps to
``<directory>.corrupt/`` so training resumes from the newest intact one and can write those
steps again. A step without a manifest (an older mcjax, or killed between Orbax's rename and
the manifest) is restored unverified, with a warning. Corruption therefore surfaces as a named
file, never as a silently different model or a "diverged" run.
"""

from __future__ import annotations

import os
import shutil
import threading

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from mcjax.eventlog import files

STATE, DATA_ITER = "state", "data_iter"
_FIX = "restore an older step (the trainer and scorer fall back to one), or retrain"


def step_dir(directory: str, step: int) -> str:
  """The folder Orbax writes checkpoint ``step`` to (its default step names)."""
  return os.path.join(directory, str(int(step)))


def steps_on_disk(directory: str) -> list[int]:
  """The finished checkpoint steps under ``directory`` (Orbax's step folders), ascending."""
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def verify_step(directory: str, step: int) -> bool:
  """Checks checkpoint ``step`` against its manifest; False (with a warning) when it has none.

  Raises:
    files.CorruptFileError: naming the missing, resized or changed file.
  """
  folder = step_dir(directory, step)
  if not os.path.exists(os.path.join(folder, files.MANIFEST)):
    logging.warning("checkpoint %s has no checksums (written by an older mcjax, or killed while "
                    "sealing it): restoring it unverified", folder)
    return False
  files.verify_manifest(folder, f"checkpoint step {step}", _FIX)
  return True


def newest_intact(directory: str, steps=None) -> int | None:
  """The newest step of ``directory`` that verifies (None when there is no checkpoint); each
  corrupt newer step is one warning line.

  Raises:
    files.CorruptFileError: when every checkpoint is corrupt.
  """
  steps = sorted(steps_on_disk(directory) if steps is None else steps, reverse=True)
  first = None
  for i, step in enumerate(steps):
    try:
      verify_step(directory, step)
      return step
    except files.CorruptFileError as e:
      first = first or e
      older = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "no older one"
      logging.warning("corrupt checkpoint, %s: %s", older, e)
  if first is not None:
    raise files.CorruptFileError(f"no intact checkpoint in {directory}: {first}")
  return None


def quarantine_corrupt(directory: str) -> list[int]:
  """Moves the corrupt steps newer than the newest intact one to ``<directory>.corrupt/``
  (kept for inspection, out of Orbax's sight); returns them. Raises like ``newest_intact``."""
  steps = steps_on_disk(directory)
  keep = newest_intact(directory, steps)
  moved = [s for s in steps if keep is None or s > keep]
  for step in moved:
    aside = os.path.join(f"{directory}.corrupt", str(step))
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(step_dir(directory, step), aside)
    logging.warning("moved the corrupt checkpoint of step %d to %s", step, aside)
  return moved


class Checkpointer:
  """Wraps ``ocp.CheckpointManager`` with a composite of the state and the data iterator."""

  def __init__(self, directory: str | os.PathLike, *, save_every: int = 1000,
               max_to_keep: int | None = 3, async_save: bool = True):
    if save_every < 1:
      raise ValueError(f"save_every must be >= 1, got {save_every}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = save_every
    self.restored_step: int | None = None  # the step the last restore returned
    self._pending: list[int] = []  # saved steps whose checksums are not written yet
    self._lock = threading.Lock()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            async_options=(ocp.AsyncOptions(post_finalization_callback=self._seal)
                           if async_save else None)))

  def _seal(self) -> None:
    """Writes the checksums of the saved steps Orbax has finished (process 0)."""
    with self._lock:  # a step's folder appears when Orbax renames it into place (finished)
      ready = [s for s in self._pending if os.path.isdir(step_dir(self.directory, s))]
      self._pending = [s for s in self._pending if s not in ready]
    for step in ready:
      if jax.process_index() == 0:
        files.write_manifest(step_dir(self.directory, step))

  def save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
    """Saves when ``step`` is a multiple of ``save_every`` (or ``force``); returns whether a
    save started. Returns before the write finishes (async)."""
    if not force and step % self.save_every:
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    with self._lock:
      self._pending.append(int(step))
    started = self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    if not self._manager.is_saving_in_progress():
      self._seal()  # a synchronous save (or one already finished)
    return started

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def delete(self, step: int) -> None:
    """Deletes the checkpoint of ``step`` (after any save in flight has finished)."""
    self._manager.wait_until_finished()
    self._manager.delete(int(step))

  def restore(self, abstract_state, data_iter=None, *, step: int | None = None):
    """The state saved at ``step`` (default: latest) placed on ``abstract_state``'s
    shardings; ``data_iter``, if given, is moved to the saved position.

    Raises:
      FileNotFoundError: when there is no checkpoint (at ``step``) under the directory.
      files.CorruptFileError: when ``step`` (or, without it, every step) fails its checksums.
      KeyError: when ``data_iter`` is given but the checkpoint holds no iterator state.
    """
    self.wait_until_finished()
    if step is None:
      step = newest_intact(self.directory, self.all_steps())
    elif int(step) in self.all_steps():
      step = int(step)
      verify_step(self.directory, step)
    if step is None or step not in self.all_steps():
      raise FileNotFoundError(
          f"no checkpoint{'' if step is None else f' at step {step}'} in {self.directory} "
          f"(steps: {self.all_steps()})")
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      saved = self._manager.item_metadata(step)
      if saved is not None and DATA_ITER not in saved.keys():
        raise KeyError(f"checkpoint step {step} in {self.directory} has no {DATA_ITER!r} item")
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    self.restored_step = step
    return restored[STATE]

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()
    self._seal()

  def close(self) -> None:
    self._manager.close()
    self._seal()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
