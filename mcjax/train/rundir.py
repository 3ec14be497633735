"""The run folder: what a run is *of*, its lock, checkpoints, progress, predictions, results.

    WORKDIR/.lock                  held (fcntl.flock) by the live run's process 0
    WORKDIR/run.json               what this is a run of (see ``identity``)
    WORKDIR/config.json            the whole config of the latest start
    WORKDIR/ckpt/<step>/           Orbax: train state + the window's Grain iterator
    WORKDIR/best/<step>/           offline_tvt: states of the epochs chosen on validation
    WORKDIR/progress/step_<step>.json   where checkpoint <step> is in the plan (``Progress``)
    WORKDIR/preds/window_<k>.npz   window k's scored evaluation records
    WORKDIR/tb/                    TensorBoard
    WORKDIR/metrics.json           the results, written last

Those are the run's own files (``RUN_FILES``): ``--overwrite`` deletes exactly them, never what
else the workdir holds (a launcher's ``world/`` and ``samples/`` inputs, notes).

Identity: ``run.json`` holds the config keys that change results (``run_config``: every key
but ``RESULT_FREE``), their hash, the data fingerprint (``data.Data.fingerprint``) and the code
version. Reopening a workdir with another config or other data raises ``RunError`` naming the
keys that differ; the keys of ``RESULT_FREE`` (``train.max_steps``, the log and checkpoint
cadence, the mesh layout, the data's location and the run's name) may change, so a stopped run
continues with a larger ``train.max_steps``. Another code version is only logged.

Process 0 writes; every process takes part in the (collective) Orbax saves and restores.
Every file is written through ``atomic_write``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess

import jax
import ml_collections
import numpy as np
from absl import logging

from mcjax import config as mcconfig
from mcjax import distributed
from mcjax.eventlog.files import atomic_write
from mcjax.train import RunError
from mcjax.runtime import checkpoint

RUN_FILES = ("run.json", "config.json", "ckpt", "best", "progress", "preds", "tb",
             "metrics.json")
# Keys (or key prefixes ending in ".") that may differ between the starts of one run.
RESULT_FREE = ("name", "data.", "mesh.", "train.max_steps", "train.log_every_steps",
               "train.checkpoint_every_steps")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------ identity

def run_config(cfg: ml_collections.ConfigDict) -> dict:
  """{"a.b": value} of every config key that changes results (JSON values)."""
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(f"{prefix}{k}.", v)
      else:
        flat[f"{prefix}{k}"] = v
  walk("", cfg)
  keep = {k: v for k, v in flat.items()
          if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESULT_FREE)}
  return json.loads(json.dumps(keep, sort_keys=True, default=str))


def _describe() -> str:
  try:
    out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=_REPO, timeout=10,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


# Taken when the process loads the training code, not when a run starts: a long process (the
# ablation study trains every run in one) keeps running the code it loaded while the checkout
# moves on.
_CODE_VERSION = _describe()


def code_version() -> str:
  """``git describe --always --dirty`` of the repository when this process imported the
  training code, or "unknown"."""
  return _CODE_VERSION


def identity(cfg: ml_collections.ConfigDict, fingerprint: dict) -> dict:
  """What a run is of: its result-changing config (and hash), data and code."""
  config = run_config(cfg)
  blob = json.dumps(config, sort_keys=True).encode()
  return {"config_sha256": hashlib.sha256(blob).hexdigest()[:16], "config": config,
          "data": fingerprint, "code": code_version()}


def differences(recorded: dict, current: dict) -> list[str]:
  """'key (old -> new)' for each config key and the data that differ."""
  a, b = recorded.get("config", {}), current["config"]
  out = [f"{k} ({a.get(k, 'missing')!r} -> {b.get(k, 'missing')!r})"
         for k in sorted(set(a) | set(b)) if a.get(k, "missing") != b.get(k, "missing")]
  old, new = recorded.get("data", {}), current["data"]
  if old.get("sha256") != new.get("sha256"):
    out.append(f"data (samples {old.get('sha256')} in {old.get('dir')} -> {new.get('sha256')} "
               f"in {new.get('dir')})")
  return out


# ------------------------------------------------------------------------------ progress

@dataclasses.dataclass
class Progress:
  """Where a checkpoint is in the plan, as ``progress/step_<step>.json`` keeps it."""
  window: int = 0   # the window being trained on; len(plan.windows) once the data ran out
  step: int = 0
  valid: list = dataclasses.field(default_factory=list)  # offline_tvt: a record per epoch
  best: dict | None = None  # the record of ``valid`` chosen so far (its state: best/<step>)

  def offer(self, record: dict, select_metric: str) -> bool:
    """Appends a validation record; True when it becomes the best by ``select_metric``
    ("<task>/<metric>", e.g. "ctr/auc"; the lowest logloss is best)."""
    self.valid.append(record)
    task, metric = select_metric.split("/")
    higher_is_better = mcconfig.SELECT_METRICS[metric]
    value, best = record[task][metric], self.best and self.best[task][metric]
    if value is None:
      return False
    if best is None or (value > best if higher_is_better else value < best):
      self.best = record
      return True
    return False


# ------------------------------------------------------------------------------ the folder

class RunDir:
  """One run's folder, opened for a run of ``ident`` (locked, checked, recorded)."""

  def __init__(self, workdir: str, ident: dict, cfg: ml_collections.ConfigDict, *,
               save_every: int, overwrite: bool = False):
    self.path = os.path.abspath(workdir)
    self.main = jax.process_index() == 0
    self._lock = None
    if self.main:
      os.makedirs(self.path, exist_ok=True)
      self._lock = _take_lock(self.path)
      try:
        if overwrite:
          self.clear()
        self._check_identity(ident)
        checkpoint.quarantine_corrupt(self._file("ckpt"))  # resume from the newest intact
      except BaseException:
        self.close()
        raise
      atomic_write(self._file("config.json"), cfg.to_json_best_effort(indent=1))
    distributed.sync("rundir")
    self.ckpt = checkpoint.Checkpointer(self._file("ckpt"), save_every=save_every)
    self._best = None  # opened on first use (offline_tvt)
    self.saved = self.ckpt.latest_step()  # the newest step with a checkpoint

  @property
  def best(self) -> checkpoint.Checkpointer:
    if self._best is None:
      self._best = checkpoint.Checkpointer(self._file("best"), max_to_keep=None)
    return self._best

  def _file(self, *parts: str) -> str:
    return os.path.join(self.path, *parts)

  def clear(self) -> None:
    """Deletes this run's own files (``RUN_FILES``); a link is removed, not followed."""
    for name in RUN_FILES:
      p = self._file(name)
      if os.path.islink(p) or os.path.isfile(p):
        os.remove(p)
      elif os.path.isdir(p):
        shutil.rmtree(p)
    logging.warning("--overwrite: deleted the run files of %s", self.path)

  def _check_identity(self, ident: dict) -> None:
    path = self._file("run.json")
    if os.path.exists(path):
      with open(path) as f:
        recorded = json.load(f)
      diff = differences(recorded, ident)
      if diff:
        more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
        raise RunError(f"workdir {self.path} holds a run of another config or data: "
                       f"{'; '.join(diff[:4])}{more}; pass --overwrite to replace that run, "
                       "or use a new --workdir")
      if recorded.get("code") != ident["code"]:
        logging.warning("workdir %s was started by code %s, continuing with %s", self.path,
                        recorded.get("code"), ident["code"])
      return
    if os.path.isdir(self._file("ckpt")):
      logging.warning("workdir %s has checkpoints but no run.json (an older mcjax): adopting "
                      "them as a run of this config", self.path)
    atomic_write(path, json.dumps(ident, indent=1, sort_keys=True))

  # ---------------------------------------------------------------------- checkpoints

  def latest(self) -> Progress | None:
    """The progress of the latest checkpoint; None for a fresh run."""
    step = self.ckpt.latest_step()
    if step is None:
      return None
    with open(self._progress_path(step)) as f:
      return Progress(**json.load(f))

  def restore(self, like, step: int, data_iter=None):
    """The state of checkpoint ``step``, placed like the state ``like`` (its shapes, dtypes
    and shardings); ``data_iter`` is moved to its saved position."""
    return self.ckpt.restore(_abstract(like), data_iter, step=step)

  def save(self, progress: Progress, state, data_iter=None) -> None:
    """Records ``progress`` and checkpoints ``state`` (and the iterator) at its step; the
    checkpoint is skipped when that step has one already."""
    step = progress.step
    if self.main:
      os.makedirs(self._file("progress"), exist_ok=True)
      atomic_write(self._progress_path(step), json.dumps(dataclasses.asdict(progress)))
    distributed.sync(f"progress-{step}")
    if self.saved != step:
      self.ckpt.save(step, state, data_iter, force=True)
      self.saved = step
    self._prune()

  def save_best(self, step: int, state) -> None:
    if step not in self.best.all_steps():
      self.best.save(step, state, force=True)

  def restore_best(self, like, progress: Progress):
    """The state of the epoch chosen on validation, placed like ``like``; ``like`` itself
    when no epoch was validated (e.g. stopped by max_steps inside the first)."""
    if progress.best is None:
      return like
    self.best.wait_until_finished()
    return self.best.restore(_abstract(like), step=progress.best["step"])

  def _progress_path(self, step: int) -> str:
    return self._file("progress", f"step_{step:08d}.json")

  def _prune(self) -> None:
    """Deletes progress files older than the oldest kept checkpoint (Orbax deleted those
    checkpoints), then best states that no kept progress file chose."""
    steps = self.ckpt.all_steps()
    if not steps:
      return
    chosen = set()
    for path in glob.glob(self._file("progress", "step_*.json")):
      step = int(os.path.basename(path)[len("step_"):-len(".json")])
      if step < min(steps):
        if self.main:
          os.remove(path)
        continue
      with open(path) as f:
        best = json.load(f).get("best")
      chosen.add(best and best["step"])
    for step in self.best.all_steps() if os.path.isdir(self._file("best")) else ():
      if step not in chosen:
        self.best.delete(step)

  def finish(self) -> None:
    """Waits for saves in flight, prunes, and lets every process see every file."""
    for c in (self.ckpt, self._best):
      if c is not None:
        c.wait_until_finished()
    self._prune()
    distributed.sync("finished")

  def close(self) -> None:
    for c in (getattr(self, "ckpt", None), getattr(self, "_best", None)):
      if c is not None:
        c.close()
    if self._lock is not None:
      self._lock.close()  # releases the flock
      self._lock = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # ---------------------------------------------------------------------- predictions

  def save_preds(self, index: int, preds: dict) -> dict:
    """Keeps window ``index``'s scored records (process 0); returns ``preds``."""
    if self.main:
      os.makedirs(self._file("preds"), exist_ok=True)
      buf = io.BytesIO()
      np.savez(buf, **preds)
      atomic_write(self._file("preds", f"window_{index:05d}.npz"), buf.getvalue())
    return preds

  def load_preds(self, windows: int) -> dict[int, dict]:
    """{window: scored records} of the windows [0, ``windows``) that were scored."""
    out = {}
    for k in range(windows):
      path = self._file("preds", f"window_{k:05d}.npz")
      if os.path.exists(path):
        with np.load(path) as z:
          out[k] = dict(z)
    return out

  def write_json(self, name: str, obj: dict) -> None:
    if self.main:
      atomic_write(self._file(name), json.dumps(obj, indent=1))


def _abstract(state):
  """ShapeDtypeStructs of a live state, with its shardings (an Orbax restore target)."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)


def _take_lock(path: str):
  """An open, flock-ed ``path/.lock`` naming its holder; RunError when another holds it."""
  f = open(os.path.join(path, ".lock"), "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise RunError(f"workdir {path} is in use by {holder} (lock {path}/.lock): wait for that "
                   "run to end, or use another --workdir") from None
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
  f.flush()
  return f
