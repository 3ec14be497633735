"""Parameter versions: published whole by the trainer, swapped in by the scorer.

A ``Version`` is an immutable snapshot of the model's variables (``{"tables", "params",
"rest"}``, device arrays no one writes after it is published), its number, the train step it
holds and the wall time it became visible.

* In one process, ``Versions`` is a double buffer: ``publish(state, step)`` copies the train
  state's variables into new buffers (the train step donates its state, so the served arrays
  must be the scorer's own), waits until the copy is complete, then replaces the one
  reference ``current``. A reader takes ``current`` once per request and scores with that
  version's arrays throughout: it sees the old version or the new one, whole, never a mix;
  requests never wait for a publish.
* Between processes, ``DirPublisher`` writes each version into its own folder
  (``v_<number>/weights.npz`` and ``meta.json``, written under a temporary name and renamed)
  and then replaces the ``latest`` pointer file atomically (``eventlog.files.atomic_write``);
  ``DirVersions.poll()`` in the serving process loads the version ``latest`` names when it is
  newer than the one served and swaps it in the same way.

Each publish also measures what a version costs to move (``bytes``): whole (every variable)
and as a delta (the embedding rows that changed since the previous version, with their row
ids, plus the dense variables whole), counted on the device without moving anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from mcjax.eventlog.files import atomic_write

LATEST = "latest"


@dataclasses.dataclass(frozen=True)
class Version:
  number: int
  step: int
  weights: dict
  published_s: float


def weights_of(state) -> dict:
  return {"tables": state.tables, "params": state.params, "rest": state.rest}


@jax.jit
def _copy(weights: dict) -> dict:
  return jax.tree.map(jnp.copy, weights)


@jax.jit
def _changed_rows(new_tables: dict, old_tables: dict) -> dict:
  return jax.tree.map(lambda a, b: jnp.sum(jnp.any(a != b, axis=-1)), new_tables, old_tables)


def _nbytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def version_bytes(new: dict, old: dict | None) -> dict:
  """{"whole", "delta", "rows_changed"}: bytes to send ``new`` whole, and as the rows of its
  tables that differ from ``old`` (each with an int64 row id) plus its dense variables."""
  whole = _nbytes(new)
  if old is None:
    return {"whole": whole, "delta": whole, "rows_changed": None}
  changed = jax.device_get(_changed_rows(new["tables"], old["tables"]))
  rows = delta = 0
  for n, t in zip(jax.tree.leaves(changed), jax.tree.leaves(new["tables"])):
    rows += int(n)
    delta += int(n) * (t.shape[-1] * t.dtype.itemsize + 8)
  delta += _nbytes(new["params"]) + _nbytes(new["rest"])
  return {"whole": whole, "delta": delta, "rows_changed": rows}


class Versions:
  """The in-process double buffer (module docstring)."""

  def __init__(self, first_number: int = 0):
    self._current: Version | None = None
    self.next_number = first_number
    self.history = []  # one record per version: number, step, published_s, bytes

  @property
  def current(self) -> Version | None:
    return self._current

  def swap(self, weights: dict, step: int, number: int | None = None) -> Version:
    """Makes ``weights`` (complete, owned by the caller no more) the served version."""
    jax.block_until_ready(weights)
    old = self._current
    number = self.next_number if number is None else number
    v = Version(number, int(step), weights, time.time())
    self._current = v  # the swap: one reference, replaced whole
    self.next_number = number + 1
    self.history.append({"version": number, "step": int(step), "published_s": v.published_s,
                         "bytes": version_bytes(weights, old.weights if old else None)})
    return v

  def publish(self, state, step: int) -> Version:
    """A copy of the train state's variables, published as the next version."""
    return self.swap(_copy(weights_of(state)), step)


def _flat(weights: dict) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(weights)
  return {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v) for k, v in flat}


class DirPublisher:
  """Writes versions for other processes (module docstring); keeps the newest ``keep``."""

  def __init__(self, root: str, keep: int = 3):
    self.root, self.keep = os.path.abspath(root), int(keep)
    os.makedirs(self.root, exist_ok=True)

  def write(self, v: Version) -> str:
    name = f"v_{v.number:08d}"
    tmp, final = os.path.join(self.root, name + ".tmp"), os.path.join(self.root, name)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.savez(os.path.join(tmp, "weights.npz"), **_flat(jax.device_get(v.weights)))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump({"version": v.number, "step": v.step, "published_s": v.published_s}, f)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write(os.path.join(self.root, LATEST), name)
    for old in sorted(d for d in os.listdir(self.root) if d.startswith("v_")
                      and not d.endswith(".tmp"))[:-self.keep]:
      shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
    return final


class DirVersions(Versions):
  """The serving side of ``DirPublisher``: ``poll()`` swaps in the newest published version.
  ``like`` is a weights tree whose shardings the loaded arrays take (the scorer's)."""

  def __init__(self, root: str, like: dict):
    super().__init__()
    self.root = os.path.abspath(root)
    flat = jax.tree_util.tree_flatten_with_path(like)[0]
    self._keys = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in flat]
    self._shardings = [x.sharding for _, x in flat]
    self._treedef = jax.tree.structure(like)

  def poll(self) -> Version | None:
    """Loads the version ``latest`` names if it is newer than the served one; returns the
    served version (None: nothing published yet)."""
    try:
      with open(os.path.join(self.root, LATEST)) as f:
        name = f.read().strip()
    except FileNotFoundError:
      return self.current
    folder = os.path.join(self.root, name)
    try:
      with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
      if self.current is not None and meta["version"] <= self.current.number:
        return self.current
      with np.load(os.path.join(folder, "weights.npz")) as z:
        host = {k: z[k] for k in z.files}
    except FileNotFoundError:  # pruned while we read: the next poll finds the newer one
      return self.current
    leaves = [jax.device_put(host[k], s) for k, s in zip(self._keys, self._shardings)]
    return self.swap(jax.tree.unflatten(self._treedef, leaves), meta["step"], meta["version"])
