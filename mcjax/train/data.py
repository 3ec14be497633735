"""A run's data: the samples folder a config trains on, and the batches the trainer reads.

``prepare(cfg, workdir, cache_dir)`` is what the launchers call before training: it builds,
when missing, the simulated world of ``config.data`` into ``workdir/world`` (unless
``config.data.log_dir`` names an event log) and the samples of the config's Moment mode into
the sample cache (``cache_dir``, default ``workdir/samples``), and returns the samples folder.
Process 0 builds; the others wait for it.

``Data(cfg, samples_dir)`` opens the folder's two splits for the trainer: their time arrays
(for the plan), a fingerprint (what ``rundir`` records), each window's training batches (a
Grain iterator, checkpointable), evaluation batches and records. Batches reach the devices through
``mcjax.contract.batch.to_device``.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import ml_collections
import numpy as np

from mcjax import config as mcconfig
from mcjax import distributed, metrics
from mcjax.samples import loader, shards
from mcjax.contract.schema import TASKS
from mcjax.train.plan import Plan

# samples_info.json keys that say what a split holds (not where or when it was written).
_INFO_KEYS = ("schema_version", "num_samples", "kind_counts", "history_records", "block_size",
              "sample_ts_ms_range")


def prepare(cfg: ml_collections.ConfigDict, workdir: str, cache_dir: str | None = None) -> str:
  """The samples folder of ``cfg``, built (with its simulated world) when missing."""
  from mcjax.samples.build import ensure_samples  # the data stack, only to build
  log_dir = cfg.data.log_dir
  if not log_dir:
    from mcjax.sim import world
    log_dir = os.path.join(workdir, "world")
    if jax.process_index() == 0 and not os.path.exists(log_dir):
      world.build(log_dir, cfg.data.preset, cfg.data.world_seed)
  distributed.sync("world")
  if not os.path.isdir(log_dir):
    raise FileNotFoundError(f"config.data.log_dir: {log_dir} is not a folder")
  cache_root = cache_dir or os.path.join(workdir, "samples")
  if jax.process_index() == 0:
    ensure_samples(log_dir, cache_root, mcconfig.moment_config(cfg))
  distributed.sync("samples")
  return ensure_samples(log_dir, cache_root, mcconfig.moment_config(cfg))


class Data:
  """The two splits of a samples folder, read the way the config asks."""

  def __init__(self, cfg: ml_collections.ConfigDict, samples_dir: str):
    self.cfg, self.dir = cfg, os.path.abspath(samples_dir)
    self.train_src = shards.open_samples(samples_dir, "train")
    self.eval_src = shards.open_samples(samples_dir, "eval")
    self.train_ts = shards.sample_ts_ms(self.train_src)
    self.eval_ts = shards.sample_ts_ms(self.eval_src)
    self.sv_len, self.lv_len = int(cfg.moment.sv_hist_len), int(cfg.moment.lv_hist_len)

  def fingerprint(self) -> dict:
    """What the samples are, independent of their path: each split's counts, schema, Moment
    config and sample times, hashed (``sha256``); ``dir`` is for the reader only."""
    h = hashlib.sha256()
    for src, ts in ((self.train_src, self.train_ts), (self.eval_src, self.eval_ts)):
      meta = {k: src.info.get(k) for k in _INFO_KEYS}
      meta["moment"] = src.info.get("metadata", {}).get("moment")
      h.update(json.dumps(meta, sort_keys=True).encode())
      h.update(np.ascontiguousarray(ts, np.int64).tobytes())
    return {"sha256": h.hexdigest()[:16], "dir": self.dir,
            "samples": {"train": len(self.train_src), "eval": len(self.eval_src)}}

  def train_batches(self, plan: Plan, k: int):
    """This process's batches of window ``k`` of the plan: ``plan.epochs`` passes, shuffled
    per epoch when ``train.shuffle_within_window``; a Grain iterator (its position is
    checkpointed). None when the window has no samples (or k is past the last window)."""
    w = plan.windows[k] if k < len(plan.windows) else None
    if w is None or not w.n_train:
      return None
    t = self.cfg.train
    return iter(loader.make_batches(
        self.train_src, batch_size=t.batch_size, sv_len=self.sv_len, lv_len=self.lv_len,
        indices=range(w.train_lo, w.train_hi), shuffle=bool(t.shuffle_within_window),
        seed=self.cfg.seed + w.index, num_epochs=plan.epochs))

  def eval_batches(self, lo: int, hi: int):
    """This process's batches of the evaluation records [lo, hi) in order, the last padded."""
    return loader.make_batches(self.eval_src, batch_size=self.cfg.train.eval_batch_size,
                                 sv_len=self.sv_len, lv_len=self.lv_len,
                                 indices=np.arange(lo, hi))

  def eval_records(self, lo: int, hi: int, probs: np.ndarray) -> dict:
    """The scored records [lo, hi) as the metrics (and ``preds/*.npz``) take them."""
    if hi <= lo:
      z = np.zeros((0, len(TASKS)), np.float32)
      return {"probs": z, "labels": z, "mask": z, "user_id": np.zeros(0, np.int64),
              "in_highlight": np.zeros(0, np.int32), "lv_len": np.zeros(0, np.int64),
              "exposure_id": np.zeros(0, np.int64),
              **{k: np.zeros(0, np.float32) for k in metrics.ORACLE_FIELDS}}
    rec = self.eval_src.__getitems__(np.arange(lo, hi))
    return {"probs": probs.astype(np.float32), "labels": rec["labels"],
            "mask": rec["label_mask"], "user_id": rec["user_id"],
            "in_highlight": rec["in_highlight"], "lv_len": np.diff(rec["lv_offsets"]),
            "exposure_id": rec["exposure_id"],
            **{k: rec[k] for k in metrics.ORACLE_FIELDS}}
