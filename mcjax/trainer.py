"""train_and_evaluate: data, mesh, born-sharded state, the online (or offline) loop, metrics.

Sections, in order: data (event log -> sample cache), mesh and state, jitted steps, restore,
the loop over time windows (score the window's evaluation records, then train on the samples
emitted in it), checkpoints, and the final metrics. Every process runs the same code: each
reads its slice of every global batch, and the step never branches on the device count.

Resume: checkpoints hold the train state and the current window's Grain iterator; a small
``progress/<step>.json`` names the window, and every window's predictions are kept in
``preds/``; so a run killed at any point continues from its latest checkpoint and ends with
the same parameters and metrics as an uninterrupted run. ``train.max_steps`` caps training:
the run checkpoints where it stopped, still scores the remaining windows (with the stopped
model), and a rerun of the workdir with a larger ``max_steps`` continues from there.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from mcjax import config as mcconfig
from mcjax import losses, metrics, windows
from mcjax.model import build_model
from mcjax.samples import pipeline, shards
from mcjax.samples.build import ensure_samples
from mcjax.samples.schema import TASKS
from mcjax.train import checkpoint, mesh as mesh_lib, state as state_lib, step as step_lib


def prepare_data(cfg: ml_collections.ConfigDict, workdir: str,
                 cache_dir: str | None = None) -> tuple[str, str]:
  """(event-log folder, samples folder): the simulated world and the sample cache are built
  under ``workdir`` (or ``cache_dir``) when missing (process 0 builds; the others wait)."""
  log_dir = cfg.data.log_dir
  if not log_dir:
    from mcjax.sim import world
    log_dir = os.path.join(workdir, "world")
    if jax.process_index() == 0 and not os.path.exists(log_dir):
      world.build(log_dir, cfg.data.preset, cfg.data.world_seed)
  _sync("world")
  if not os.path.isdir(log_dir):
    raise FileNotFoundError(f"--data / config.data.log_dir: {log_dir} is not a folder")
  cache_root = cache_dir or os.path.join(workdir, "samples")
  path = None
  if jax.process_index() == 0:
    path = ensure_samples(log_dir, cache_root, mcconfig.moment_config(cfg))
  _sync("samples")
  if path is None:
    path = ensure_samples(log_dir, cache_root, mcconfig.moment_config(cfg))
  return log_dir, path


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def check_layout(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """The resolved mesh shape; refuses layouts the batch cannot be split over."""
  try:
    shape = mesh_lib.resolve_shape(tuple(cfg.mesh.shape), jax.device_count())
  except ValueError as e:
    raise ValueError(f"config.mesh.shape: {e}") from None
  for key in ("batch_size", "eval_batch_size"):
    b = cfg.train[key]
    if b % shape[0]:
      raise ValueError(f"config.train.{key}={b} is not divisible by the data axis "
                       f"({shape[0]} of mesh {shape})")
    if b % jax.process_count():
      raise ValueError(f"config.train.{key}={b} is not divisible by the "
                       f"{jax.process_count()} processes")
  return shape


class Runner:
  """Holds the mesh, the jitted steps and the data of one run."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, samples_dir: str):
    self.cfg, self.workdir = cfg, workdir
    self.mesh = mesh_lib.make_mesh(check_layout(cfg))
    build_fn = functools.partial(build_model, cfg.model)
    optim = state_lib.optim_config(cfg)
    self.model_def, self.state, self.shardings = state_lib.create_train_state(
        build_fn, self.mesh, optim, seed=cfg.seed,
        max_replicated_bytes=int(cfg.mesh.max_replicated_mb * 2**20))
    loss_fn = functools.partial(losses.compute_loss, cfg=cfg.loss)
    self.train_step = step_lib.make_train_step(
        self.model_def, optim, loss_fn, self.shardings, self.mesh,
        dense_below_rows=cfg.model.embedding.large_table_rows)
    self.eval_step = step_lib.make_eval_step(self.model_def, loss_fn, self.shardings,
                                             self.mesh)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self.train_src = shards.open_samples(samples_dir, "train")
    self.eval_src = shards.open_samples(samples_dir, "eval")
    self.train_ts = shards.sample_ts_ms(self.train_src)
    self.eval_ts = shards.sample_ts_ms(self.eval_src)
    m = cfg.moment
    self.sv_len, self.lv_len = int(m.sv_hist_len), int(m.lv_hist_len)

  def abstract_state(self):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.state,
        self.shardings)

  def to_device(self, local: dict, global_rows: int) -> dict:
    """A process-local numpy batch -> global arrays sharded on "data"."""
    out = {}
    for name, value in step_lib.host_batch(local).items():
      out[name] = jax.make_array_from_process_local_data(
          self.batch_sharding, value, (global_rows,) + value.shape[1:])
    return out

  def train_iter(self, window: windows.Window, epoch_seed: int):
    return iter(pipeline.make_batches(
        self.train_src, batch_size=self.cfg.train.batch_size, sv_len=self.sv_len,
        lv_len=self.lv_len, indices=range(window.train_lo, window.train_hi),
        shuffle=bool(self.cfg.train.shuffle_within_window), seed=epoch_seed))

  def predict(self, window: windows.Window) -> dict:
    """Scores the window's evaluation records; returns host arrays for the metrics."""
    b = self.cfg.train.eval_batch_size
    idx = np.arange(window.eval_lo, window.eval_hi)
    it = pipeline.make_batches(self.eval_src, batch_size=b, sv_len=self.sv_len,
                               lv_len=self.lv_len, indices=idx) if len(idx) else ()
    probs = []
    for local in it:
      p, _ = self.eval_step(self.state, self.to_device(local, b))
      probs.append(_gather(p))
    probs = np.concatenate(probs)[:len(idx)] if probs else np.zeros((0, len(TASKS)))
    if not len(idx):
      return {"probs": probs, "labels": np.zeros((0, len(TASKS)), np.float32),
              "mask": np.zeros((0, len(TASKS)), np.float32), "user_id": np.zeros(0, np.int64),
              "in_highlight": np.zeros(0, np.int32), "lv_len": np.zeros(0, np.int64),
              "exposure_id": np.zeros(0, np.int64)}
    rec = self.eval_src.__getitems__(idx)
    return {"probs": probs.astype(np.float32), "labels": rec["labels"],
            "mask": rec["label_mask"], "user_id": rec["user_id"],
            "in_highlight": rec["in_highlight"], "lv_len": np.diff(rec["lv_offsets"]),
            "exposure_id": rec["exposure_id"]}


def _gather(x) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _atomic_write(path: str, write) -> None:
  tmp = path + ".tmp"
  write(tmp)
  os.replace(tmp, path)


def _save_preds(workdir: str, k: int, preds: dict) -> None:
  os.makedirs(os.path.join(workdir, "preds"), exist_ok=True)
  path = os.path.join(workdir, "preds", f"window_{k:05d}.npz")
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **preds)
  _atomic_write(path, write)


def _load_preds(workdir: str, k: int) -> dict:
  with np.load(os.path.join(workdir, "preds", f"window_{k:05d}.npz")) as z:
    return dict(z)


def _progress_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "progress", f"step_{step:08d}.json")


def _prune_progress(workdir: str, steps: list[int]) -> None:
  """Deletes progress files of steps older than the oldest kept checkpoint (Orbax deleted
  those checkpoints; a progress file is only read with its checkpoint)."""
  if not steps:
    return
  for path in glob.glob(os.path.join(workdir, "progress", "step_*.json")):
    step = int(os.path.basename(path)[len("step_"):-len(".json")])
    if step < min(steps):
      os.remove(path)


def _write_progress(workdir: str, step: int, progress: dict) -> None:
  os.makedirs(os.path.join(workdir, "progress"), exist_ok=True)
  path = _progress_path(workdir, step)
  _atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(progress)))


def compute_metrics(cfg, plan: list[windows.Window], preds: dict[int, dict]) -> dict:
  """metrics.json: overall, per slice, per window (see README)."""
  acc = metrics.WindowedMetrics()
  window_rows = []
  for w in plan:
    p = preds.get(w.index)
    if p is None or len(p["probs"]) == 0:
      continue
    slices = metrics.standard_slices(
        {"in_highlight": p["in_highlight"], "lv_len": p["lv_len"]},
        cfg.train.live_sparse_threshold)
    acc.add(w.index, p["probs"], p["labels"], p["mask"], p["user_id"], slices)
    window_rows.append(w)
  overall = acc.overall()
  out_windows = []
  for w, m in zip(window_rows, acc.per_window()):
    p = preds[w.index]
    hl = p["in_highlight"]
    row = {"start_ms": w.start_ms, "end_ms": w.end_ms, "n": int(len(p["probs"])),
           "highlight_share": float(np.mean(hl == 1)) if (hl >= 0).any() else None}
    row.update(m["overall"])
    out_windows.append(row)
  return {"config": cfg.name, "mode": cfg.train.mode, "overall": overall["overall"],
          "slices": overall.get("slices", {}), "windows": out_windows}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str,
                       cache_dir: str | None = None) -> dict:
  """Runs one config end to end in ``workdir``; returns (and writes) metrics.json.

  ``cache_dir`` holds the built samples (default ``workdir/samples``); runs sharing it
  share the samples of their Moment config.
  """
  mcconfig.validate(cfg)
  check_layout(cfg)
  os.makedirs(workdir, exist_ok=True)
  main = jax.process_index() == 0
  _, samples_dir = prepare_data(cfg, workdir, cache_dir)
  runner = Runner(cfg, workdir, samples_dir)
  window_ms = int(cfg.train.window_min * 60_000)
  if cfg.train.mode == "online":
    plan = windows.online_windows(runner.eval_ts, runner.train_ts, window_ms)
  else:
    plan = windows.offline_split(runner.eval_ts, runner.train_ts, cfg.train.offline_split)

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "ckpt"),
                                 save_every=cfg.train.checkpoint_every_steps)
  start_window, resume_iter = 0, None
  latest = ckpt.latest_step()
  if latest is not None:
    with open(_progress_path(workdir, latest)) as f:
      progress = json.load(f)
    start_window = progress["window"]
    if start_window < len(plan):
      resume_iter = runner.train_iter(plan[start_window], cfg.seed + start_window)
      runner.state = ckpt.restore(runner.abstract_state(), resume_iter, step=latest)
    else:
      runner.state = ckpt.restore(runner.abstract_state(), step=latest)
    logging.info("resumed from step %d (window %d of %d)", latest, start_window, len(plan))

  writer = None
  if main:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(os.path.join(workdir, "tb"))
  total_batches = sum(pipeline.num_batches(w.n_train, cfg.train.batch_size)
                      for w in plan if w.n_train)
  step = int(jax.device_get(runner.state.step))
  bar = tqdm(total=total_batches, initial=step, desc=f"train {cfg.name}", unit="step",
             disable=not main, smoothing=0.05)
  t0, examples = time.time(), 0
  max_steps = cfg.train.max_steps
  saved = latest  # the newest step with a checkpoint (saves are asynchronous)
  stopped = False  # max_steps reached: later windows are still scored, not trained on

  def save(w_index: int, it) -> None:
    nonlocal saved
    if main:
      _write_progress(workdir, step, {"window": w_index, "step": step})
    _sync(f"progress-{step}")
    ckpt.save(step, runner.state, it, force=True)
    saved = step
    if main:
      _prune_progress(workdir, ckpt.all_steps())

  for w in plan[start_window:]:
    if resume_iter is None:
      preds = runner.predict(w)
      if main:
        _save_preds(workdir, w.index, preds)
        if writer is not None and len(preds["probs"]):
          ctr = metrics.auc(preds["labels"][:, 0], preds["probs"][:, 0])
          if np.isfinite(ctr):
            writer.add_scalar("eval/ctr_auc_window", ctr, w.index)
      it = runner.train_iter(w, cfg.seed + w.index) if w.n_train and not stopped else None
    else:
      it, resume_iter = resume_iter, None
    while it is not None:
      if 0 <= max_steps <= step:  # checked before reading: the iterator stays on this batch
        stopped = True
        if saved != step:  # a longer rerun of this workdir continues from here
          save(w.index, it)
        break
      local = next(it, None)
      if local is None:
        break
      runner.state, m = runner.train_step(runner.state,
                                          runner.to_device(local, cfg.train.batch_size))
      step += 1
      examples += int(local["weight"].sum()) * jax.process_count()
      bar.update(1)
      if step % cfg.train.log_every_steps == 0 and main:
        m = jax.device_get(m)
        bar.set_postfix(loss=f"{float(m['learning/loss']):.4f}", window=f"{w.index}/{len(plan)}")
        for name, value in m.items():
          writer.add_scalar(name, float(value), step)
      if step % cfg.train.checkpoint_every_steps == 0:
        save(w.index, it)
  bar.close()
  wall = time.time() - t0
  if not stopped:  # the data ran out: mark the run done
    if main:
      _write_progress(workdir, step, {"window": len(plan), "step": step})
    _sync("final-progress")
    if saved != step:
      ckpt.save(step, runner.state, force=True)
  _sync("predictions")  # process 0 has written every window's predictions
  ckpt.wait_until_finished()
  if main:
    _prune_progress(workdir, ckpt.all_steps())

  preds = {w.index: _load_preds(workdir, w.index) for w in plan
           if os.path.exists(os.path.join(workdir, "preds", f"window_{w.index:05d}.npz"))}
  result = compute_metrics(cfg, plan, preds)
  result["train"] = {"steps": step, "examples_this_run": examples, "wall_s": round(wall, 2),
                     "examples_per_s": round(examples / wall, 1) if wall > 0 else None}
  if main:
    path = os.path.join(workdir, "metrics.json")
    _atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(result, indent=1)))
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=1))
    for task in TASKS:
      r = result["overall"].get(task, {})
      if r.get("auc") is not None:
        writer.add_scalar(f"eval/{task}_auc", r["auc"], step)
    writer.close()
  ckpt.close()
  return result
