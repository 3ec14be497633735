"""Export: the scoring function as StableHLO (``jax.export``), loadable with jax and numpy only.

    from mcjax.serve import Scorer, export
    export.export(Scorer.from_workdir("runs/tiny"), "runs/tiny/export")
    # any process with jax + numpy, no mcjax:
    score = runpy.run_path("runs/tiny/export/load_exported.py")["load_exported"](
        "runs/tiny/export")
    probs, ranking_score = score(batch)     # batch: RequestBuilder.batch(...) arrays

The folder holds one serialized function per bucket (``score_<B>.bin``: B candidates), the
weights as explicit arguments (``weights.npz``, one array per variable path, so one artifact
serves any checkpoint of the same config: re-save the npz), ``meta.json`` (buckets, input
names and dtypes, tasks, ranking settings, config name and step) and ``load_exported.py``, the
standalone loader (``load_exported`` below, copied verbatim: it imports jax, numpy, json and
os only). The exported function is ``Scorer.score_fn`` (evaluation's forward pass and the
ranking fusion) on one device; inputs are the model inputs of ``RequestBuilder.batch`` (ids
folded, times wrapped to int32, histories padded to the run's lengths): the features
themselves are built by the engine, which needs mcjax.
"""

from __future__ import annotations

import inspect
import json
import os

import jax
import numpy as np
from flax import traverse_util

from mcjax.contract.schema import TASKS
from mcjax.eventlog import files

LOADER = "load_exported.py"
WEIGHTS = "weights.npz"
META = "meta.json"


def _function_file(bucket: int) -> str:
  return f"score_{bucket}.bin"


MARKS = (LOADER,)  # what an export folder holds (the only kind --overwrite replaces)


def check_out(out_dir: str, overwrite: bool, reads: dict[str, str | None]) -> None:
  """Refuses, before any work, an ``out_dir`` that overlaps an input, exists without
  ``overwrite``, or is not an export folder (``files.check_output``)."""
  files.check_output(out_dir, "--out", reads=reads, overwrite=overwrite,
                     kind="an export folder", marks=MARKS)


def export(scorer, out_dir: str, *, buckets=None, platforms=None, overwrite: bool = False,
           reads: dict[str, str | None] | None = None) -> str:
  """Writes ``scorer``'s scoring function per bucket, its weights and the loader.

  The folder is written in a staging sibling and renamed into place: an existing one is
  replaced whole (no stale bucket file stays), and only when ``overwrite`` and it is an
  export folder; a failed or killed export leaves the old folder (or none).

  Args:
    scorer: a ``Scorer``.
    out_dir: the folder to write.
    buckets: candidate counts to export (default: the scorer's).
    platforms: lowering platforms, e.g. ("cpu", "cuda") (default: this backend's).
    overwrite: replace an existing export folder.
    reads: label -> input paths ``out_dir`` may not overlap (e.g. the run's workdir).
  Returns:
    ``out_dir``.
  """
  check_out(out_dir, overwrite, reads or {})
  with files.staging(out_dir) as tmp:
    _write(scorer, tmp, buckets, platforms)
    files.replace_dir(tmp, out_dir, overwrite)
  return out_dir


def _write(scorer, out_dir: str, buckets, platforms) -> None:
  """The export's files, written into the (empty) folder ``out_dir``."""
  buckets = tuple(sorted({int(b) for b in (buckets or scorer.buckets)}))
  flat = traverse_util.flatten_dict(jax.device_get(scorer.weights))
  paths = {"/".join(map(str, path)): path for path in flat}
  arrays = {name: np.asarray(flat[path]) for name, path in paths.items()}

  def score(weights: dict, batch: dict):
    tree = traverse_util.unflatten_dict({paths[n]: w for n, w in weights.items()})
    tree = {part: tree.get(part, {}) for part in ("tables", "params", "rest")}
    return scorer.score_fn(tree, batch)

  weight_specs = {n: jax.ShapeDtypeStruct(a.shape, a.dtype) for n, a in arrays.items()}
  zero = scorer.zero_batch(1)
  for b in buckets:
    batch_specs = {k: jax.ShapeDtypeStruct((b,) + v.shape[1:], v.dtype) for k, v in zero.items()}
    exported = jax.export.export(jax.jit(score), platforms=platforms)(weight_specs, batch_specs)
    with open(os.path.join(out_dir, _function_file(b)), "wb") as f:
      f.write(exported.serialize())
  np.savez(os.path.join(out_dir, WEIGHTS), **arrays)
  r = scorer.cfg.model.ranking
  meta = {"buckets": list(buckets), "tasks": list(TASKS),
          "inputs": {k: str(v.dtype) for k, v in zero.items()},
          "widths": {k: list(v.shape[1:]) for k, v in zero.items()},
          "ranking": {"fusion": r.fusion, "weights": {t: float(r.weights[t]) for t in TASKS}},
          "config": scorer.cfg.get("name"), "step": scorer.step,
          "platforms": list(platforms or (jax.default_backend(),))}
  with open(os.path.join(out_dir, META), "w") as f:
    json.dump(meta, f, indent=1)
  with open(os.path.join(out_dir, LOADER), "w") as f:
    f.write('"""Loads a scorer exported by mcjax.serve.export (needs jax and numpy only)."""\n\n'
            + inspect.getsource(load_exported))


def load_exported(directory: str):
  """Loads an exported scorer with jax and numpy only.

  Returns ``score(batch) -> (probs [n, len(tasks)], ranking_score [n])`` (numpy float32);
  ``batch`` maps the model input names (``meta.json`` "inputs") to arrays of n rows, as
  ``mcjax.serve.RequestBuilder.batch`` gives them; other keys are ignored. Rows are padded
  with zeros to the smallest exported bucket that holds them; larger batches are scored in
  chunks of the largest bucket. ``score.meta`` is the folder's meta.json.
  """
  import json  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported
  import os  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported

  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported
  import numpy as np  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported

  with open(os.path.join(directory, "meta.json")) as f:
    meta = json.load(f)
  with np.load(os.path.join(directory, "weights.npz")) as z:
    weights = {name: jax.device_put(z[name]) for name in z.files}
  calls = {}
  for b in meta["buckets"]:
    with open(os.path.join(directory, f"score_{b}.bin"), "rb") as f:
      calls[b] = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
  buckets = sorted(calls)
  inputs = meta["inputs"]

  def score(batch: dict):
    n = len(batch[next(iter(inputs))])
    probs = np.zeros((n, len(meta["tasks"])), np.float32)
    ranking_score = np.zeros(n, np.float32)
    for lo in range(0, n, buckets[-1]):
      m = min(n - lo, buckets[-1])
      b = next(size for size in buckets if size >= m)
      part = {}
      for name, dtype in inputs.items():
        value = np.asarray(batch[name][lo:lo + m], dtype)
        part[name] = np.concatenate([value, np.zeros((b - m,) + value.shape[1:], dtype)])
      p, s = calls[b](weights, part)
      probs[lo:lo + m], ranking_score[lo:lo + m] = np.asarray(p)[:m], np.asarray(s)[:m]
    return probs, ranking_score

  score.meta = meta
  return score
