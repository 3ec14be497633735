"""Parameter versions: published by the trainer, swapped in by the scorer.

A ``Version`` is an immutable snapshot of the model's variables (``{"tables", "params",
"rest"}``, device arrays no one writes after it is published), its number, the train step it
holds, the wall time it became visible, and the rows of each embedding table that differ bit
for bit from the version before it (``changed``, counted from version ``prev``).

* In one process, ``Versions`` is a double buffer: ``publish(state, step)`` copies the train
  state's variables into new buffers (the train step donates its state, so the served arrays
  must be the scorer's own), waits until the copy is complete, then replaces the one
  reference ``current``. A reader takes ``current`` once per request and scores with that
  version's arrays throughout: it sees the old version or the new one, whole, never a mix;
  requests never wait for a publish.
* Between processes, ``DirPublisher`` writes each version into its own folder
  (``v_<number>/``: its file and ``meta.json``, written under a temporary name and renamed)
  and then replaces the ``latest`` pointer file atomically (``eventlog.files.atomic_write``);
  ``DirVersions.poll()`` in the serving process rebuilds the version ``latest`` names on the
  host when it is newer than the one served, completely, and swaps it in the same way: a
  reader sees a version whole or not at all. A version is written

  - whole, a *base* (``weights.npz``: every variable): always without ``delta``; with it, the
    first version a publisher writes and every ``full_every``-th after;
  - with ``delta``, otherwise as a delta on the version before it (``delta.npz``): the rows of
    each embedding table that differ bit for bit from that version (the rows training touched
    since, less any a step left unchanged), as ``<table>@rows`` (int64 row ids) and
    ``<table>@values``, plus the dense variables (``params``, ``rest``) whole.

  ``meta.json`` names the version, its step, kind, the version a delta applies to (``prev``),
  its chain's base and the chain's id (new with every base, so a delta is never applied to a
  version of another chain, e.g. one a killed run wrote under the same number), and the size
  and sha256 of its file. The reader applies the deltas in order, each on a copy, to the last
  version it rebuilt when that one is on the same chain, else to the chain's base, each file
  checked against its sha256. The publisher keeps every version from the latest one's base on
  (and the newest ``keep``). A file of the chain of the version ``latest`` still names that is
  missing or corrupt is refused: ``VersionError``, one line naming the file, and the served
  version stays; a file that went because a newer version was published meanwhile (pruned)
  is no error: ``latest`` is read again.

Each publish also measures what a version costs to move (``bytes``): whole (every variable)
and as a delta (the changed rows, each with an int64 row id, plus the dense variables whole),
counted without moving anything; ``DirPublisher.history`` has the bytes each version took on
disk and the seconds its write took.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import time
import uuid
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from mcjax import distributed
from mcjax.eventlog.files import atomic_write

LATEST = "latest"
WHOLE, DELTA = "weights.npz", "delta.npz"
META = "meta.json"


class VersionError(ValueError):
  """A published version that cannot be rebuilt: a file of its chain missing or corrupt."""


class _Gone(Exception):
  """A file went because a newer version was published meanwhile (pruned)."""


@dataclasses.dataclass(frozen=True)
class Version:
  number: int
  step: int
  weights: dict
  published_s: float
  prev: int | None = None      # the version ``changed`` is counted from (None: none before)
  masks: dict | None = None    # per table, per row, on the device: differs from prev

  @functools.cached_property
  def changed(self) -> dict | None:
    """"tables/..." -> int64 ids of the rows that differ from ``prev`` (None: no prev). The
    per-row flags come to the host only when asked (a publisher writing a delta), once."""
    if self.masks is None:
      return None
    masks = distributed.host(self.masks)
    return {k: np.flatnonzero(m).astype(np.int64) for k, m in _flat({"tables": masks}).items()}


def weights_of(state) -> dict:
  return {"tables": state.tables, "params": state.params, "rest": state.rest}


@jax.jit
def _copy(weights: dict) -> dict:
  return jax.tree.map(jnp.copy, weights)


def _bits(x):
  return jax.lax.bitcast_convert_type(
      x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize])


@jax.jit
def _changed_mask(new_tables: dict, old_tables: dict) -> dict:
  """Per table, per row: whether any bit differs."""
  return jax.tree.map(lambda a, b: jnp.any(_bits(a) != _bits(b), axis=tuple(range(1, a.ndim))),
                      new_tables, old_tables)


@jax.jit
def _take(table, ids):
  return jnp.take(table, ids, axis=0)


def _keyed(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(k, simple=True, separator="/"): v for k, v in flat}


def _flat(weights: dict) -> dict:
  return {k: np.asarray(v) for k, v in _keyed(weights).items()}


def _nbytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


@jax.jit
def _counts(masks: dict) -> dict:
  return jax.tree.map(lambda m: jnp.sum(m, dtype=jnp.int32), masks)


def version_bytes(new: dict, counts: dict | None) -> dict:
  """{"whole", "delta", "rows_changed"}: bytes to send ``new`` whole, and as its changed
  table rows (``counts``: "tables/..." -> how many; each row with an int64 row id) plus its
  dense variables."""
  whole = _nbytes(new)
  if counts is None:
    return {"whole": whole, "delta": whole, "rows_changed": None}
  rows = delta = 0
  for key, t in _keyed({"tables": new["tables"]}).items():
    n = int(counts[key])
    rows += n
    delta += n * ((t.size // max(t.shape[0], 1)) * t.dtype.itemsize + 8)
  delta += _nbytes(new["params"]) + _nbytes(new["rest"])
  return {"whole": whole, "delta": delta, "rows_changed": rows}


def rows_of(table, ids: np.ndarray) -> np.ndarray:
  """``table[ids]`` on the host, gathered where the table lives (the ids padded to a power of
  two, so a few sizes compile)."""
  if not len(ids):
    return np.zeros((0, *table.shape[1:]), table.dtype)
  size = 1 << (len(ids) - 1).bit_length()
  padded = np.zeros(size, np.int32)
  padded[:len(ids)] = ids
  return np.asarray(distributed.host(_take(table, padded)))[:len(ids)]


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
    masks = (_changed_mask(weights["tables"], old.weights["tables"]) if old is not None
             else None)
    # only one count per table comes to the host here; the row ids when a publisher asks
    counts = (_flat({"tables": distributed.host(_counts(masks))}) if masks is not None
              else None)
    v = Version(number, int(step), weights, time.time(), old.number if old else None, masks)
    self._current = v  # the swap: one reference, replaced whole
    self.next_number = number + 1
    self.history.append({"version": number, "step": int(step), "published_s": v.published_s,
                         "bytes": version_bytes(weights, counts)})
    return v

  def publish(self, state, step: int) -> Version:
    """A copy of the train state's variables, published as the next version."""
    return self.swap(_copy(weights_of(state)), step)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def _name(number: int) -> str:
  return f"v_{number:08d}"


class DirPublisher:
  """Writes versions for other processes (module docstring): whole, or with ``delta`` as the
  changed rows on the version before, with a whole base every ``full_every`` versions. Keeps
  the newest ``keep`` versions and every version from the latest one's base on. When the
  trainer runs in several processes, each calls ``write`` (the arrays are gathered from all
  of them) and process 0 alone writes the files."""

  def __init__(self, root: str, keep: int = 3, delta: bool = False, full_every: int = 10):
    if isinstance(full_every, bool) or not isinstance(full_every, int) or full_every < 1:
      raise ValueError(f"realtime.full_every must be an int >= 1, got {full_every!r}")
    self.root, self.keep = os.path.abspath(root), int(keep)
    self.delta, self.full_every = bool(delta), full_every
    self.main = distributed.is_main()
    if self.main:
      os.makedirs(self.root, exist_ok=True)
    self._last: dict | None = None  # meta.json of the last version written here
    self.history = []  # per version written: version, kind, bytes of its file, write_s

  def _delta_arrays(self, v: Version) -> dict:
    out = {}
    for key, table in _keyed({"tables": v.weights["tables"]}).items():
      out[key + "@rows"] = v.changed[key]
      out[key + "@values"] = rows_of(table, v.changed[key])
    out.update(_flat(distributed.host({"params": v.weights["params"],
                                       "rest": v.weights["rest"]})))
    return out

  def write(self, v: Version) -> str:
    t0, name, last = time.time(), _name(v.number), self._last
    as_delta = (self.delta and last is not None and v.masks is not None
                and v.prev == last["version"] and v.number - last["base"] < self.full_every)
    tmp, final = os.path.join(self.root, name + ".tmp"), os.path.join(self.root, name)
    if as_delta:
      arrays, file, chain, base = self._delta_arrays(v), DELTA, last["chain"], last["base"]
    else:
      arrays, file = _flat(distributed.host(v.weights)), WHOLE
      chain, base = uuid.uuid4().hex, v.number
    if not self.main:  # gathered with process 0, which writes
      self._last = {"version": v.number, "base": base, "chain": chain}
      return final
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    path = os.path.join(tmp, file)
    np.savez(path, **arrays)
    meta = {"version": v.number, "step": v.step, "published_s": v.published_s,
            "kind": "delta" if as_delta else "base", "prev": last["version"] if as_delta else None,
            "base": base, "chain": chain, "file": file, "bytes": os.path.getsize(path),
            "sha256": _sha256(path)}
    with open(os.path.join(tmp, META), "w") as f:
      json.dump(meta, f)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write(os.path.join(self.root, LATEST), name)
    self._last = meta
    self.history.append({"version": v.number, "kind": meta["kind"], "bytes": meta["bytes"],
                         "write_s": round(time.time() - t0, 4)})
    names = sorted(d for d in os.listdir(self.root) if d.startswith("v_")
                   and not d.endswith(".tmp"))
    keep = set(names[-self.keep:]) | {d for d in names if int(d[2:]) >= base}
    for old in names:
      if old not in keep:
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
    self._shapes = {k: (tuple(x.shape), np.dtype(x.dtype)) for k, (_, x) in zip(self._keys, flat)}
    self._treedef = jax.tree.structure(like)
    self._host: dict | None = None  # the last version rebuilt: version, chain, arrays (read only)

  def _latest(self) -> str | None:
    try:
      with open(os.path.join(self.root, LATEST)) as f:
        return f.read().strip()
    except FileNotFoundError:
      return None

  def _missing(self, path: str, latest: str, what: str) -> Exception:
    if self._latest() != latest:
      return _Gone()
    served = "nothing" if self.current is None else f"version {self.current.number}"
    return VersionError(f"{path}: missing; {what} cannot be rebuilt ({served} still served)")

  def _meta(self, name: str, latest: str, what: str) -> dict:
    path = os.path.join(self.root, name, META)
    try:
      with open(path) as f:
        return json.load(f)
    except FileNotFoundError:
      raise self._missing(path, latest, what) from None
    except ValueError as e:
      raise VersionError(f"{path}: unreadable ({e}); {what} not loaded") from None

  def _arrays(self, meta: dict, latest: str, what: str) -> dict:
    """The arrays of one version's file, checked against its meta.json."""
    path = os.path.join(self.root, _name(meta["version"]), meta.get("file", WHOLE))
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      raise self._missing(path, latest, what) from None
    if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
      raise VersionError(f"{path}: sha256 differs from its meta.json (corrupt); {what} not "
                         "loaded")
    try:
      with np.load(io.BytesIO(data)) as z:
        arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
      raise VersionError(f"{path}: unreadable ({e}); {what} not loaded") from None
    want = self._keys if meta.get("kind", "base") == "base" else (
        [k for k in self._keys if not k.startswith("tables/")]
        + [k + s for k in self._keys if k.startswith("tables/") for s in ("@rows", "@values")])
    lost = [k for k in want if k not in arrays]
    if lost:
      raise VersionError(f"{path}: holds no {lost[0]}; {what} not loaded")
    return arrays

  def _apply(self, arrays: dict, delta: dict, path: str, what: str) -> dict:
    """A new dict: ``arrays`` with ``delta``'s rows and dense variables (never in place)."""
    out = dict(arrays)
    for key in self._keys:
      if not key.startswith("tables/"):
        out[key] = delta[key]
        continue
      rows, values = delta[key + "@rows"], delta[key + "@values"]
      shape, dtype = self._shapes[key]
      if (values.dtype != dtype or values.shape != (len(rows), *shape[1:])
          or (len(rows) and (rows.min() < 0 or rows.max() >= shape[0]))):
        raise VersionError(f"{path}: the rows of {key} do not fit its table; {what} not loaded")
      if not len(rows):
        continue
      table = arrays[key].copy()
      table[rows] = values
      out[key] = table
    return out

  def load(self, name: str, latest: str | None = None) -> tuple[dict, dict]:
    """(meta.json, host arrays by key) of the version in folder ``name``, rebuilt from its
    chain; ``latest``: what ``latest`` named when the caller read it (``VersionError``: a file
    missing or corrupt; ``_Gone``: pruned since ``latest`` moved on)."""
    latest = self._latest() if latest is None else latest
    meta = self._meta(name, latest, f"the version in {name}")
    what = f"version {meta['version']}"
    chain, cache = [meta], self._host  # newest first, back to a base or the cached version
    while chain[-1].get("kind", "base") == "delta":
      m = chain[-1]
      if cache is not None and cache["chain"] == m["chain"] and cache["version"] == m["prev"]:
        break
      prev = self._meta(_name(m["prev"]), latest, what)
      if prev["version"] != m["prev"] or prev.get("chain") != m["chain"]:
        raise VersionError(f"{os.path.join(self.root, _name(m['prev']), META)}: not version "
                           f"{m['prev']} of chain {m['chain']}; {what} not loaded")
      chain.append(prev)
    if chain[-1].get("kind", "base") == "base":
      arrays = self._arrays(chain[-1], latest, what)
      arrays = {k: arrays[k] for k in self._keys}
      chain = chain[:-1]
    else:
      arrays = cache["arrays"]
    for m in reversed(chain):
      path = os.path.join(self.root, _name(m["version"]), m["file"])
      arrays = self._apply(arrays, self._arrays(m, latest, what), path, what)
    for k in self._keys:
      if (arrays[k].shape, arrays[k].dtype) != self._shapes[k]:
        raise VersionError(f"{os.path.join(self.root, name)}: {k} is {arrays[k].dtype}"
                           f"{list(arrays[k].shape)}, the scorer's {self._shapes[k][1]}"
                           f"{list(self._shapes[k][0])}; {what} not loaded")
    self._host = {"version": meta["version"], "chain": meta.get("chain"), "arrays": arrays}
    return meta, arrays

  def poll(self) -> Version | None:
    """Loads the version ``latest`` names if it is newer than the served one; returns the
    served version (None: nothing published yet). ``VersionError``: it cannot be rebuilt (one
    line naming the file); the served version stays."""
    for _ in range(5):  # a version pruned under us: a newer one is there, read latest again
      name = self._latest()
      if name is None:
        return self.current
      try:
        meta = self._meta(name, name, f"the version in {name}")
        if self.current is not None and meta["version"] <= self.current.number:
          return self.current
        meta, host = self.load(name, name)
      except _Gone:
        continue
      leaves = [jax.device_put(host[k], s) for k, s in zip(self._keys, self._shardings)]
      return self.swap(jax.tree.unflatten(self._treedef, leaves), meta["step"], meta["version"])
    return self.current
