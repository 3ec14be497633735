"""Scoring: a trained run's checkpoint + an event log -> per-task probabilities and the
Ranking_Score of candidate lives, with the forward pass evaluation uses.

    scorer = Scorer.from_workdir("runs/tiny", log="runs/tiny/world")
    ranked = scorer.score(user_id=7, ts_ms=1746090000000, live_ids=[101, 102, 103])
    ranked.live_ids, ranked.ranking_score, ranked.probs  # best first; probs [n, len(TASKS)]

Restore: the run's ``config.json`` rebuilds the model abstractly (nothing is initialised) and
the latest Orbax checkpoint under ``ckpt/`` is restored onto this process's devices, whatever
mesh wrote it: one device, or a ("data", "model") mesh (default: every device on "model", the
big tables row-sharded over them; candidates are split on "data" when that axis is > 1).
Only the model's variables are kept; the optimizer state is dropped after the restore.
On a mesh over several processes (the real-time loop's), every process calls ``score_batch``
with the same batch and gets every row's scores.

The forward pass is ``runtime.step.eval_forward`` (the one ``eval_step`` runs), then
``logits_to_probs`` and ``model.ranking.ranking_score`` (fusion and per-task weights from the
run's ``model.ranking``; default: product fusion, prod_t p_t ** w_t with w = ctr 1.0, lvtr 0.5,
ltr 0.1, cmtr 0.1, gtr 0.2, wtr 0.1), in one jitted function.

No recompiles while serving: a request's candidates are padded with zero rows to the smallest
bucket that holds them (``BUCKETS``, each rounded up to a multiple of the "data" axis), larger
requests are scored in chunks of the largest bucket, so the function compiles once per bucket
(``warmup()`` compiles them all before the first request).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from mcjax import distributed, runtime
from mcjax.contract.schema import MODEL_INPUTS, TASKS
from mcjax.model import ranking
from mcjax.serve import ids
from mcjax.runtime import checkpoint, mesh as mesh_lib, state as state_lib
from mcjax.contract import batch as batch_lib
from mcjax.runtime import step as step_lib

# Candidates per compiled call: 1 (probes), 8 and 32 (small slates), 128 (a typical request
# of ~100 candidates), 512 (batch scoring; larger requests go in chunks of it).
BUCKETS = (1, 8, 32, 128, 512)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from ``workdir/config.json``."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"workdir {workdir}: no config.json (not a finished training run)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def make_score_fn(model_def: state_lib.ModelDef, cfg: ml_collections.ConfigDict):
  """``score(weights, batch) -> (probs [B, T], ranking_score [B])``: evaluation's forward
  pass and the config's ranking fusion; ``weights`` = {"tables", "params", "rest"}."""

  def score(weights: dict, batch: dict):
    out = step_lib.eval_forward(model_def, weights["tables"], weights["params"],
                                weights["rest"], batch)
    probs = step_lib.logits_to_probs(out)
    return probs, ranking.ranking_score(probs, cfg.model.ranking)

  return score


def _one(values: np.ndarray, name: str) -> int:
  if len(values) != 1:
    raise ids.IdError(f"{name}: {len(values)} values, expected one integer")
  return int(values[0])


def pad_rows(batch: dict, rows: int) -> dict:
  """Every array padded with zero rows (or cut) to ``rows`` along the first axis."""
  out = {}
  for name, value in batch.items():
    n = len(value)
    if n >= rows:
      out[name] = value[:rows]
    else:
      out[name] = np.concatenate([value, np.zeros((rows - n,) + value.shape[1:], value.dtype)])
  return out


@dataclasses.dataclass(frozen=True)
class Ranking:
  """One request's candidates, best first."""
  live_ids: np.ndarray       # [n] int64
  ranking_score: np.ndarray  # [n] float32, descending
  probs: np.ndarray          # [n, len(TASKS)] float32, columns in TASKS order
  unseen: dict               # {"users": 0 or 1, "lives": count} ids unknown to the log

  def prob(self, task: str) -> np.ndarray:
    """[n] probabilities of one task (a name of ``schema.TASKS``)."""
    return self.probs[:, TASKS.index(task)]


class Scorer:
  """A restored model, its jitted scoring function per bucket, and optionally an event source
  for building requests (see the module docstring)."""

  def __init__(self, cfg: ml_collections.ConfigDict, model_def: state_lib.ModelDef,
               weights: dict, mesh, *, buckets=BUCKETS, log=None, step: int | None = None):
    self.cfg, self.model_def, self.weights, self.mesh = cfg, model_def, weights, mesh
    self.step = step
    data = mesh.shape["data"]
    self.buckets = tuple(sorted({-(-int(b) // data) * data for b in buckets}))
    self.score_fn = make_score_fn(model_def, cfg)
    self._batch_sharding = mesh_lib.batch_sharding(mesh)
    weight_shardings = jax.tree.map(lambda a: a.sharding, weights)
    self._jit = jax.jit(step_lib.under_mesh(self.score_fn, mesh),
                        in_shardings=(weight_shardings, self._batch_sharding),
                        out_shardings=self._batch_sharding)
    self.requests = None
    if log is not None:
      self.attach(log)

  @classmethod
  def from_workdir(cls, workdir: str, *, log=None, step: int | None = None, devices=None,
                   mesh_shape=(1, -1), buckets=BUCKETS) -> "Scorer":
    """Restores the latest (or ``step``'s) checkpoint of a training workdir.

    Args:
      workdir: a training run's folder (``config.json``, ``ckpt/``).
      log: the event source of ``score`` (a log folder, tables or an ``EventBuffer``); None:
        only ``score_batch`` on prebuilt features.
      step: the checkpoint step (default: the latest).
      devices: the devices to score on (default: all of this process's).
      mesh_shape: (data, model) over ``devices``; -1 = the rest.
      buckets: candidate counts compiled for.
    Raises:
      FileNotFoundError: one line naming the workdir when config.json or the checkpoint is
        missing.
    """
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"workdir {workdir} does not exist")
    ckpt_dir = os.path.join(workdir, "ckpt")
    if not os.path.isdir(ckpt_dir):
      raise FileNotFoundError(f"workdir {workdir}: no checkpoint (ckpt/ is missing)")
    cfg = load_config(workdir)
    mesh = mesh_lib.make_mesh(mesh_shape, devices or jax.local_devices())
    rt = runtime.build(cfg, mesh, init=False, check_replicated=False)  # the restore target
    model_def, target = rt.model_def, rt.state
    with checkpoint.Checkpointer(ckpt_dir) as ckpt:
      try:  # without a step: the newest intact checkpoint (corrupt newer ones warned about)
        state = ckpt.restore(target, step=step)
        step = ckpt.restored_step
      except FileNotFoundError:
        which = "no checkpoint" if step is None else f"no checkpoint at step {step}"
        raise FileNotFoundError(f"workdir {workdir}: {which} in ckpt/ (steps: "
                                f"{ckpt.all_steps()})") from None
    weights = {"tables": state.tables, "params": state.params, "rest": state.rest}
    return cls(cfg, model_def, weights, mesh, buckets=buckets, log=log, step=step)

  def attach(self, log) -> None:
    """Sets the event source of ``score``: a log folder, tables or an ``EventBuffer``."""
    from mcjax import config as mcconfig  # pylint: disable=g-import-not-at-top
    from mcjax.serve.requests import RequestBuilder  # pylint: disable=g-import-not-at-top
    self.requests = RequestBuilder(log, mcconfig.moment_config(self.cfg))

  def bucket(self, n: int) -> int:
    """The padded size of a call with ``n`` candidates (n <= the largest bucket)."""
    return next(b for b in self.buckets if b >= n)

  def zero_batch(self, rows: int = 1) -> dict:
    """All-zero model inputs of ``rows`` rows, with the dtypes and widths requests have."""
    m = self.cfg.moment
    device = batch_lib.host_batch(batch_lib.zero_batch(rows, m.sv_hist_len, m.lv_hist_len))
    return {name: device[name] for name in MODEL_INPUTS}

  def warmup(self) -> None:
    """Compiles the scoring function for every bucket (before the first request)."""
    for b in self.buckets:
      jax.block_until_ready(self._call(self.zero_batch(b)))

  def _call(self, padded: dict, weights: dict | None = None):
    sharding = self._batch_sharding
    if sharding.is_fully_addressable:
      batch = jax.device_put(padded, sharding)
    else:  # a mesh over several processes: each has the whole batch and places its rows
      batch = {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
               for k, v in padded.items()}
    return self._jit(self.weights if weights is None else weights, batch)

  def score_batch(self, batch: dict, weights: dict | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(probs [n, T], ranking_score [n]) of a prepared batch of any n rows
    (``RequestBuilder.batch``: the model inputs, as the device receives them), scored with
    ``weights`` (default: the restored ones; ``mcjax.serve.versions`` passes the version it
    serves, taken once per call)."""
    n = len(batch["user_id"])
    probs = np.zeros((n, len(TASKS)), np.float32)
    scores = np.zeros(n, np.float32)
    big = self.buckets[-1]
    for lo in range(0, n, big):
      part = {k: v[lo:lo + big] for k, v in batch.items()}
      m = len(part["user_id"])
      p, s = distributed.host(self._call(pad_rows(part, self.bucket(m)), weights))
      probs[lo:lo + m], scores[lo:lo + m] = p[:m], s[:m]
    return probs, scores

  def score(self, user_id: int, ts_ms: int, live_ids) -> Ranking:
    """Ranks one request's candidate lives with features built from the event source.

    ``user_id`` and ``ts_ms`` are one integer each, ``live_ids`` distinct integers (Python or
    numpy ints, or decimal text; see ``mcjax.serve.ids``).

    Raises:
      ValueError: when ts_ms is before the event log's first event.
      ids.IdError: an id or time that is not an exact non-negative integer, or a live twice.
    """
    if self.requests is None:
      raise ValueError("Scorer.score needs an event source (from_workdir(log=...) or attach)")
    user_id, ts_ms = (_one(ids.argument_ids(v, k), k)
                      for k, v in (("user_id", user_id), ("ts_ms", ts_ms)))
    live_ids = ids.argument_ids(live_ids, "live_ids")
    ids.check_distinct(live_ids, "live_ids")
    before, _ = self.requests.outside([ts_ms])
    if before:
      raise ValueError(f"ts_ms={ts_ms} is before the event log's first event "
                       f"({self.requests.time_range[0]})")
    probs, scores = self.score_batch(self.requests.batch(user_id, ts_ms, live_ids))
    order = np.argsort(-scores, kind="stable")
    return Ranking(live_ids[order], scores[order], probs[order],
                   self.requests.unseen([user_id], live_ids))
