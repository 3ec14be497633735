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
"""

from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp

STATE, DATA_ITER = "state", "data_iter"


class Checkpointer:
  """Wraps ``ocp.CheckpointManager`` with a composite of the state and the data iterator."""

  def __init__(self, directory: str | os.PathLike, *, save_every: int = 1000,
               max_to_keep: int | None = 3, async_save: bool = True):
    if save_every < 1:
      raise ValueError(f"save_every must be >= 1, got {save_every}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = save_every
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save))

  def save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
    """Saves when ``step`` is a multiple of ``save_every`` (or ``force``); returns whether a
    save started. Returns before the write finishes (async)."""
    if not force and step % self.save_every:
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

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
      KeyError: when ``data_iter`` is given but the checkpoint holds no iterator state.
    """
    step = self.latest_step() if step is None else int(step)
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
    return restored[STATE]

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
