"""One batch path, from sample rows to device arrays, beside the sample contract.

Every batch a device sees goes through here, in training, evaluation, serving and the
benchmarks:

1. ``pad_table``: a sample table (variable-length histories) -> fixed-shape arrays, the
   histories cut or zero-padded to the run's widths (the Grain loader,
   ``mcjax.samples.loader``, and the scorer's requests call it);
2. ``host_batch``: the host transform: host-only fields dropped, int64 ids folded to int32
   (``fold_ids``), other int64 wrapped and float64 narrowed (JAX runs without x64);
3. ``to_device``: a process-local batch -> global arrays sharded on the mesh's "data" axis.

``fold_ids`` and ``fmix32`` (MurmurHash3's finaliser) are here because the host folds ids
before any device sees them; the model's hashing (``mcjax.model.embedding``) uses the same
two functions, so numpy and the device hash every id identically.
"""

from __future__ import annotations

import numpy as np

from mcjax.contract import schema


def fmix32(h, xp=np):
  """MurmurHash3's 32-bit finaliser on uint32 arrays of ``xp`` (numpy on the host, or
  jax.numpy): the hash of ``fold_ids``, of the id hashing in ``mcjax.model.embedding`` and of
  the model's initialisers (``mcjax.model.layers``)."""
  h = h ^ (h >> 16)
  h = h * xp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * xp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def fold_ids(ids) -> np.ndarray:
  """int64 (or uint64) ids -> int32, mixing in all 64 bits: ``lo32 ^ fmix(hi32')`` (see the
  module docstring); the identity for ids in int32 range. Host-side (numpy)."""
  ids = np.asarray(ids)
  if ids.dtype.kind not in "iu":
    raise TypeError(f"fold_ids needs integer ids, got dtype {ids.dtype}")
  if ids.dtype.itemsize < 8:
    return ids.astype(np.int32)
  u = ids.astype(np.uint64)
  lo = (u & np.uint64(0xFFFFFFFF)).astype(np.uint32)
  sign = np.where(lo >> np.uint32(31) == 1, np.uint32(0xFFFFFFFF), np.uint32(0))
  hi = (u >> np.uint64(32)).astype(np.uint32) ^ sign
  with np.errstate(over="ignore"):
    return (lo ^ fmix32(hi, np)).view(np.int32)


EXTRA_FIELDS = ("sv_len", "lv_len", "weight")


def pad_table(table: dict, sv_len: int, lv_len: int) -> dict:
  """A sample table -> dict of fixed-shape arrays (histories padded/truncated, lengths added).

  Padding is 0 after the valid items; sequences longer than the width keep their first (most
  recent) items. Adds ``sv_len`` / ``lv_len`` (int32 valid lengths). Non-sequence fields the
  table lacks stay absent (a scoring request has model inputs only).
  """
  out = {f.name: table[f.name] for f in schema.FIELDS if not f.is_sequence and f.name in table}
  for prefix, width, names in (("sv", sv_len, schema.SV_FIELDS),
                               ("lv", lv_len, schema.LV_FIELDS)):
    off = table[schema.OFFSETS[prefix]]
    valid = np.minimum(np.diff(off), width)
    cols = np.arange(width)
    mask = cols[None, :] < valid[:, None]
    flat = (off[:-1, None] + cols[None, :])[mask]
    for name in names:
      padded = np.zeros(mask.shape, schema.FIELD[name].dtype)
      padded[mask] = table[name][flat]
      out[name] = padded
    out[f"{prefix}_len"] = valid.astype(np.int32)
  return out


def zero_batch(rows: int, sv_len: int, lv_len: int) -> dict:
  """All-zero padded batch of ``pad_table``'s layout plus ``weight`` (0)."""
  out = {}
  for f in schema.FIELDS:
    width = (sv_len if f.name in schema.SV_FIELDS else lv_len,) if f.is_sequence else f.shape
    out[f.name] = np.zeros((rows,) + tuple(width), f.dtype)
  out["sv_len"] = np.zeros(rows, np.int32)
  out["lv_len"] = np.zeros(rows, np.int32)
  out["weight"] = np.zeros(rows, np.float32)
  return out


def host_batch(batch: dict) -> dict:
  """A numpy batch as the steps take it (x64 is off, so nothing int64 reaches a device):

  * fields the schema marks host-only (``schema.HOST_ONLY``: the emission time, exposure keys,
    oracle ground truth) are dropped: no device computation can read them;
  * int64 ids (role "id") are folded to int32 with all 64 bits mixed in
    (``fold_ids``; the identity in int32 range), so ids that differ only in their
    high bits keep different rows;
  * other int64 fields (epoch-ms times) wrap to int32: only their differences are used, which
    wrapping keeps exact for gaps under 24.8 days (``model.features``);
  * float64 -> float32.
  """
  out = {}
  for name, value in batch.items():
    if name in schema.HOST_ONLY:
      continue
    value = np.asarray(value)
    field = schema.FIELD.get(name)
    if field is not None and field.role == "id":
      value = fold_ids(value)
    elif value.dtype == np.int64:
      value = value.astype(np.int32)
    elif value.dtype == np.float64:
      value = value.astype(np.float32)
    out[name] = value
  return out


def to_device(sharding, local: dict, global_rows: int) -> dict:
  """A process-local numpy batch (``pad_table``'s layout) -> global arrays sharded by
  ``sharding`` (batch on "data"), after ``host_batch``."""
  import jax  # pylint: disable=g-import-not-at-top  # the contract itself needs no jax
  return {name: jax.make_array_from_process_local_data(
              sharding, value, (global_rows,) + value.shape[1:])
          for name, value in host_batch(local).items()}
