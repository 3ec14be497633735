"""The train-step benchmark behind ``launch/bench.py --mode=step``: synthetic batches of the
real sample schema, the jitted sparse (or dense) train step, its costs and its rates.

Imports nothing from grain, tfds or array_record, so it runs on a bare accelerator machine.

    bench = StepBench(cfg, batch_size=1024, mesh_shape=(1, 1))
    result = bench.run(steps=10, warmup=3, repeats=5)   # a dict, see ``StepBench.run``
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from benchmarks import harness, roofline
from mcjax import config as mcconfig
from mcjax import runtime
from mcjax.contract import batch as batch_lib
from mcjax.contract import schema
from mcjax.model import build_model, costs, embedding, encoders
from mcjax.model import model as model_lib
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import state as state_lib

# Published dense peaks per chip (FLOP/s) by precision, matched against jax's device_kind
# (NVIDIA data sheets quote tensor-core TF32 and bf16 with 2:4 sparsity: halved here; "fp32"
# is the non-tensor-core rate; TPUs: Google Cloud's per-chip bf16 figures). H200 SXM: 989
# dense bf16, 494 dense TF32, 67 fp32 (an earlier brief's 790 was wrong).
PEAKS = (("H200", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}),
         ("H100", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}),
         ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
         ("TPU v6", {"bf16": 918e12}), ("TPU v5p", {"bf16": 459e12}),
         ("TPU v5", {"bf16": 197e12}), ("TPU v4", {"bf16": 275e12}))
# MFU is taken against the peak of the precision the step's matmuls run in. With
# model.compute_dtype = "float32", at JAX's DEFAULT matmul precision its float32 dots run on
# TF32 tensor cores on NVIDIA Ampere and later, and as one bf16 pass on TPU
# (docs.jax.dev/en/latest/201/precision.html); with "bfloat16" they are bf16 dots everywhere.
# (CPU: a matmul probe of the same dtype, measured now.)
STEP_PRECISION = {"gpu": "tf32", "tpu": "bf16"}


def step_precision(platform: str, compute_dtype: str = "float32") -> str:
  """The precision ("bf16", "tf32", "fp32") a train step's matmuls run in on a platform,
  given ``model.compute_dtype``."""
  if compute_dtype == "bfloat16":
    return "bf16"
  return STEP_PRECISION.get(platform, "fp32")
# Raw id fields: drawn over a wide range so that hashing spreads them over every table row
# (the dummy batch's ids < 1000 would touch at most 1000 rows of a 10^7-row table).
WIDE_ID_FIELDS = ("user_id", "live_id", "author_id", "sv_item", "sv_author", "lv_item",
                  "lv_author")


def shrink_for_quick(cfg: ml_collections.ConfigDict) -> None:
  """The `tiny` named config's model and history lengths (in place), for a smoke run; the
  model's compute dtype is kept."""
  tiny = mcconfig.load_config("tiny")
  tiny.model.compute_dtype = cfg.model.get("compute_dtype", "float32")
  cfg.model = tiny.model
  cfg.moment.sv_hist_len = tiny.moment.sv_hist_len
  cfg.moment.lv_hist_len = tiny.moment.lv_hist_len


def synthetic_batch(batch_size: int, sv_len: int, lv_len: int, seed: int = 0) -> dict:
  """A schema-valid padded batch as the trainer feeds it: wide random ids, int32/float32,
  real-time sample kind, host-only fields dropped."""
  batch = schema.dummy_batch(batch_size, sv_len, lv_len, seed=seed)
  rng = np.random.default_rng(seed + 1)
  for name in WIDE_ID_FIELDS:
    batch[name] = rng.integers(0, 2**31 - 1, batch[name].shape, dtype=np.int64)
  batch["kind"] = np.full_like(batch["kind"], schema.REALTIME)
  batch["weight"] = np.ones(batch_size, np.float32)  # the pipeline's padding weight
  return batch_lib.host_batch(batch)


def chip_peak_flops(device, precision: str | None = None) -> tuple[float | None, str]:
  """(published dense peak FLOP/s, its precision) of a GPU/TPU chip at ``precision``
  ("bf16", "tf32" or "fp32"; default: what the float32 step's matmuls run in on that
  platform, ``STEP_PRECISION``; see ``step_precision``); (None, "") when unknown or on
  CPU."""
  kind = str(device.device_kind)
  precision = precision or STEP_PRECISION.get(device.platform, "bf16")
  for name, peaks in PEAKS:
    if name.lower() in kind.lower() and precision in peaks:
      return peaks[precision], precision
  return None, ""


def cut_histories_for_counts(model_cfg: ml_collections.ConfigDict, batch: dict) -> dict:
  """The batch as the model looks it up with ``gsu.approx`` on: each long history cut to
  recent-N + ``gsu.candidates`` positions (``MomentCross.cut_histories``). The first
  positions stand in for the pre-scored ones (row counts only, no model needed)."""
  if model_cfg.gsu.approx == "off":
    return batch
  out = dict(batch)
  for dom, on in (("lv", model_cfg.use_lv_history), ("sv", model_cfg.use_sv_history)):
    max_len = np.shape(batch[f"{dom}_item"])[1] if on else 0
    recent = (min(model_cfg.esu.recent_n, max_len) if dom == "lv" and model_cfg.esu.recent_n
              else 0)
    keep = recent + model_cfg.gsu.candidates
    if max_len <= keep:
      continue
    for name in schema.DOMAINS[dom]:
      if name in out:
        out[name] = np.asarray(out[name])[:, :keep]
    out[f"{dom}_len"] = np.minimum(np.asarray(batch[f"{dom}_len"]), keep)
  return out


def embedding_traffic(model_cfg: ml_collections.ConfigDict, batch: dict,
                      dense_below_rows: int, sparse_update: bool = True) -> dict:
  """Rows gathered and rows updated per step, and their bytes ((gathered + updated) x dim x
  the table dtype's size: 4, or 2 with ``embedding.table_dtype`` bfloat16).

  Looked-up features gather one row per id; the model's inline features one per history
  position (side-table content) or per GSU-selected position (behaviour). Sparse tables
  update their unique rows; tables below ``dense_below_rows`` rows, the inline tables (or
  all, with ``sparse_update`` off) are updated whole. With ``gsu.approx`` on, histories
  count at their cut length (``cut_histories_for_counts``; the pre-score's own row reads
  are not counted)."""
  batch = cut_histories_for_counts(model_cfg, batch)
  ids = jax.device_get(embedding.lookup_ids(model_cfg, batch))
  sizes = embedding.table_sizes(model_cfg)
  inline = embedding.inline_tables(model_cfg)
  n_gathered = {t: sum(int(a.size) for a in arrays) for t, arrays in ids.items()}
  for f in embedding.feature_plan(model_cfg):
    if not f.inline:
      continue
    shape = np.shape(batch[f.field])
    dom, suffix = f.name.split("_", 1)
    if suffix in encoders.DOMAIN_BEHAVIOUR.get(dom, ()):
      shape = (shape[0], model_lib.selected_positions(model_cfg, dom, shape[1]))
    n_gathered[f.table] = n_gathered.get(f.table, 0) + int(np.prod(shape))
  itemsize = np.dtype(jnp.dtype(model_cfg.embedding.get("table_dtype", "float32"))).itemsize
  gathered = updated = 0
  per_table = {}
  for table, n in n_gathered.items():
    vocab, dim = sizes[table]
    dense = not sparse_update or vocab < dense_below_rows or table in inline
    n_upd = vocab if dense else int(np.unique(np.concatenate(
        [a.reshape(-1) for a in ids[table]])).size)
    per_table[table] = {"vocab": vocab, "gathered": n, "updated": n_upd,
                        "update": "dense" if dense else "sparse"}
    gathered += n * dim
    updated += n_upd * dim
  return {"rows_gathered": int(sum(t["gathered"] for t in per_table.values())),
          "rows_updated": int(sum(t["updated"] for t in per_table.values())),
          "bytes": int(itemsize * (gathered + updated)), "tables": per_table}


def _cost(compiled) -> dict:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  analysis = analysis or {}
  return {"flops": float(analysis.get("flops", float("nan"))),
          "bytes_accessed": float(analysis.get("bytes accessed", float("nan")))}


class StepBench:
  """A born-sharded train state, the compiled train step and a few device-resident batches."""

  def __init__(self, cfg: ml_collections.ConfigDict, batch_size: int,
               mesh_shape=(1, 1), *, sparse_update: bool = True, num_batches: int = 4,
               model_flops: bool = True, fast_compile: bool = False):
    mcconfig.validate(cfg)
    self.cfg, self.batch_size, self.sparse_update = cfg, batch_size, sparse_update
    self.fast_compile = fast_compile
    shape = tuple(int(s) for s in mesh_shape)
    devices = None if -1 in shape else jax.devices()[:int(np.prod(shape))]
    self.mesh = mesh_lib.make_mesh(shape, devices)
    if batch_size % self.mesh.shape["data"]:
      raise ValueError(f"--batch_size={batch_size} is not divisible by the data axis "
                       f"({self.mesh.shape['data']} of mesh {tuple(self.mesh.shape.values())})")
    self.sv_len, self.lv_len = int(cfg.moment.sv_hist_len), int(cfg.moment.lv_hist_len)
    self.dense_below_rows = int(cfg.model.embedding.large_table_rows)
    rt = runtime.build(cfg, self.mesh, sparse_update=sparse_update)
    self.model_def, self.state, train_step = rt.model_def, rt.state, rt.train_step
    self.host_batch = synthetic_batch(batch_size, self.sv_len, self.lv_len)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self.batches = [self.to_device(synthetic_batch(batch_size, self.sv_len, self.lv_len, s))
                    for s in range(num_batches)]
    start = time.perf_counter()
    options = state_lib.INIT_COMPILER_OPTIONS.get(self.mesh.devices.flat[0].platform, {})
    self.step_fn = train_step.lower(self.state, self.batches[0]).compile(
        compiler_options=options if fast_compile else None)
    self.compile_s = time.perf_counter() - start
    self.step_cost = _cost(self.step_fn)
    self.model_flops = self._model_flops() if model_flops else None

  def to_device(self, batch: dict) -> dict:
    return jax.device_put(batch, self.batch_sharding)

  def _model_flops(self) -> float:
    """Forward + backward FLOPs per example (``costs.flops_per_example``, abstract model)."""
    with nnx.use_eager_sharding(False):
      model = nnx.eval_shape(lambda: build_model(self.cfg.model, rngs=nnx.Rngs(0)))
    return costs.flops_per_example(model, self.host_batch, backward=True)

  def step(self, batch: dict):
    """One train step on a device batch (updates the held state); returns its metrics."""
    self.state, metrics = self.step_fn(self.state, batch)
    return metrics

  def run(self, *, steps: int, warmup: int, repeats: int,
          peak_flops: float | None = None) -> dict:
    """Times the step; returns rates, costs, MFU and embedding traffic (see module doc)."""
    timing = harness.time_steps(lambda i: self.step(self.batches[i % len(self.batches)]),
                                block=jax.block_until_ready, warmup=warmup, steps=steps,
                                repeats=repeats)
    chips = self.mesh.devices.size
    out = harness.summary(timing, examples_per_step=self.batch_size, chips=chips)
    device = self.mesh.devices.flat[0]
    compute_dtype = self.cfg.model.get("compute_dtype", "float32")
    peak_source = "flag"
    if peak_flops is None:
      precision = step_precision(device.platform, compute_dtype)
      peak_flops, _ = chip_peak_flops(device, precision)
      peak_source = f"published dense {precision} ({compute_dtype} step at DEFAULT precision)"
      if peak_flops is None:
        n = 256 if self.fast_compile else 1024
        if precision == "bf16":
          peak_flops = roofline.matmul_rate(n, jnp.bfloat16)
          peak_source = f"bf16-input (fp32 accumulate) {n}^2 matmul probe (now)"
        else:
          peak_flops = roofline.matmul_rate(n)
          peak_source = f"fp32 {n}^2 matmul probe (now)"
    per_s_chip = out["examples_per_s_per_chip"]
    out.update(
        config=self.cfg.name, compute_dtype=compute_dtype, batch_size=self.batch_size,
        mesh=list(self.mesh.devices.shape), chips=chips, platform=device.platform,
        device_kind=str(device.device_kind), sparse_update=self.sparse_update,
        sv_len=self.sv_len, lv_len=self.lv_len,
        table_rows={k: v[0] for k, v in embedding.table_sizes(self.cfg.model).items()},
        params=self.param_counts(),
        model_flops_per_example=self.model_flops,
        step_flops=self.step_cost["flops"], step_bytes_accessed=self.step_cost["bytes_accessed"],
        peak_flops=peak_flops, peak_source=peak_source, compile_s=self.compile_s)
    if self.model_flops is None:  # fast runs skip the separate forward + backward compile
      out["model_flops_per_example"] = self.step_cost["flops"] / self.batch_size
      out["model_flops_source"] = "compiled train step (incl. optimizer)"
    else:
      out["model_flops_source"] = "costs.flops_per_example (forward + backward)"
    out["achieved_flops"] = out["model_flops_per_example"] * per_s_chip
    out["mfu"] = out["achieved_flops"] / peak_flops
    out["embedding_traffic"] = embedding_traffic(
        self.cfg.model, self.host_batch, self.dense_below_rows, self.sparse_update)
    out["embedding_bytes_per_s"] = out["embedding_traffic"]["bytes"] / (
        out["ms_per_step_median"] / 1e3)
    return out

  def param_counts(self) -> dict:
    tables = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.tables))
    dense = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))
    return {"tables": tables, "dense": dense, "total": tables + dense}


def _fmt(x, spec=",.0f"):
  return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
  """A human table of a ``launch/bench.py`` result."""
  rows = []
  if "step" in result:
    s = result["step"]
    rows += [["config", s["config"]], ["compute dtype", s.get("compute_dtype", "float32")],
             ["device", f"{s['device_kind']} x {s['chips']}"],
             ["batch / sv_len / lv_len", f"{s['batch_size']} / {s['sv_len']} / {s['lv_len']}"],
             ["ms/step (median [min, max])", f"{s['ms_per_step_median']:.2f} "
              f"[{s['ms_per_step_min']:.2f}, {s['ms_per_step_max']:.2f}]"],
             ["examples/s/chip", _fmt(s["examples_per_s_per_chip"])],
             ["model GFLOP/example (fwd+bwd)", _fmt(
                 s["model_flops_per_example"] and s["model_flops_per_example"] / 1e9, ".4f")],
             ["achieved GFLOP/s", _fmt(s["achieved_flops"] / 1e9, ",.1f")],
             ["MFU", f"{s['mfu']:.2%} of {s['peak_flops'] / 1e9:,.0f} GFLOP/s "
              f"({s['peak_source']})"],
             ["embedding MB/step", _fmt(s["embedding_traffic"]["bytes"] / 1e6, ",.2f")],
             ["compile s", _fmt(s["compile_s"], ".1f")]]
  for key in ("pipeline", "e2e"):
    if key in result:
      r = result[key]
      rows.append([f"{key} batches/s (examples/s)",
                   f"{r['batches_per_s']:.1f} ({r['examples_per_s']:,.0f})"])
  if "pipeline_over_step" in result:
    rows.append(["pipeline / step examples/s", f"{result['pipeline_over_step']:.2f}x"])
  try:
    from tabulate import tabulate  # pylint: disable=g-import-not-at-top
  except ImportError:  # a bare accelerator machine
    return "\n".join(f"{k:32s} {v}" for k, v in rows)
  return tabulate(rows)
