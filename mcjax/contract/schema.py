"""The sample schema: one declaration used by the Moment engine, the shard writer and reader,
the model and the tests.

A *sample* is one training (or evaluation) example for one live exposure at one event time.
Scalar fields have shape ``()``; crowd features, labels and masks are fixed-length vectors;
history fields are variable-length sequences (most recent first) that the input pipeline pads
to the configured length. Bump SCHEMA_VERSION on any change; readers refuse other versions.

On disk, histories are stored by reference (``REF_FIELDS``, ``history_store``); readers
return sample tables with the histories materialised, so the layout below is all that the
pipeline, the model and the tests see.

In memory, a set of N samples travels as a *sample table* (a plain dict, columnar):
every non-sequence field is an array with leading dimension N; every sequence field is the
flat concatenation of its N sequences, and ``sv_offsets`` / ``lv_offsets`` (int64, length
N + 1) give sample i's slice ``values[offsets[i]:offsets[i + 1]]`` for the ``sv_*`` and
``lv_*`` fields. Rows are sorted by (sample_ts_ms, exposure_id, kind).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SCHEMA_VERSION = "3.0.0"

# Tasks, in head order. Each is a binary label of one live exposure.
TASKS = ("ctr", "lvtr", "ltr", "cmtr", "gtr", "wtr")

# Sample kinds.
REALTIME, CLOSE, FAST, SLOW, EVAL = 0, 1, 2, 3, 4
KIND_NAMES = {REALTIME: "realtime", CLOSE: "close", FAST: "fast", SLOW: "slow", EVAL: "eval"}

# Real-time crowd features of the live at the sample's time, from all users' events strictly
# before it. Counts are raw (the model log-scales them).
CROWD_WINDOWS = ("30s", "5m", "all")
CROWD_COUNTS = ("exposures", "clicks", "likes", "comments", "gifts", "gift_value")
CROWD_FEATURES = tuple(
    [f"{c}_{w}" for w in CROWD_WINDOWS for c in CROWD_COUNTS]
    + [f"click_rate_{w}" for w in CROWD_WINDOWS]
    + ["live_age_s", "viewers_now"]
)
CROWD_INDEX = {name: i for i, name in enumerate(CROWD_FEATURES)}

# Action bitmasks stored in the history sequences.
SV_ACTION_BITS = {"like": 1, "follow": 2}
LIVE_ACTION_BITS = {"click": 1, "like": 2, "comment": 4, "gift": 8, "follow": 16}


# What a field is for; decides how it travels (``host_batch``) and what may read it.
#   "id"      a raw int64 id: a model input, hashed by the model (64 bits folded to 32 on the
#             host by ``fold_ids``, identity for ids in int32 range)
#   "time"    an epoch-millisecond model input (the query time, history item times): wrapped
#             to int32 on the host; only differences reach the model (time gaps, hour)
#   "input"   any other model input (side features, crowd counts, history behaviour)
#   "target"  read by the loss, never by the model (labels, masks, sample kind)
#   "host"    stays on the host: never sent to a device, never a model input (the emission
#             time, which would leak the labels; exposure keys; oracle ground truth)
ROLES = ("id", "time", "input", "target", "host")


@dataclasses.dataclass(frozen=True)
class Field:
  name: str
  dtype: np.dtype
  shape: tuple  # () scalar, (n,) fixed vector, (None,) variable-length sequence
  doc: str
  role: str = "input"

  @property
  def is_sequence(self) -> bool:
    return self.shape == (None,)

  @property
  def host_only(self) -> bool:
    return self.role == "host"

  @property
  def model_input(self) -> bool:
    return self.role in ("id", "time", "input")


def _f(name, dtype, shape, doc, role="input"):
  if role not in ROLES:
    raise ValueError(f"schema field {name}: role {role!r} is not one of {ROLES}")
  return Field(name, np.dtype(dtype), shape, doc, role)


_N_TASKS = len(TASKS)
_N_CROWD = len(CROWD_FEATURES)

FIELDS = (
    # identity and time
    _f("sample_ts_ms", np.int64, (), "emission time: when the stream emits the sample (orders "
       "training; never a model input)", "host"),
    _f("query_ts_ms", np.int64, (), "the features' query time q: every input uses events with "
       "ts < q and q itself (time gaps, hour); the exposure time by default", "time"),
    _f("kind", np.int32, (), "REALTIME, CLOSE, FAST, SLOW or EVAL", "target"),
    _f("exposure_id", np.int64, (), "the exposure this sample belongs to", "host"),
    _f("exposure_ts_ms", np.int64, (), "time of the exposure event", "host"),
    # ids and side features
    _f("user_id", np.int64, (), "raw user id (the model hashes it)", "id"),
    _f("live_id", np.int64, (), "raw live-room id", "id"),
    _f("author_id", np.int64, (), "raw author (streamer) id", "id"),
    _f("live_category", np.int32, (), "live room category"),
    _f("author_fans_bucket", np.int32, (), "author popularity bucket"),
    _f("user_age", np.int32, (), "user age bucket"),
    _f("user_gender", np.int32, (), "user gender code"),
    _f("user_activity", np.int32, (), "user activity bucket"),
    _f("hour_of_day", np.int32, (), "hour of the features' query time (exposure time by default), 0..23 (UTC)"),
    # real-time crowd features
    _f("crowd", np.float32, (_N_CROWD,), "CROWD_FEATURES of the live at the query time"),
    # labels
    _f("labels", np.float32, (_N_TASKS,), "0/1 per task in TASKS order", "target"),
    _f("label_mask", np.float32, (_N_TASKS,), "1 where the label is trained in this sample",
       "target"),
    # short-video history of the user as of the query time, most recent first
    _f("sv_item", np.int64, (None,), "short-video id", "id"),
    _f("sv_author", np.int64, (None,), "short-video author id", "id"),
    _f("sv_category", np.int32, (None,), "short-video category"),
    _f("sv_tag", np.int32, (None,), "short-video tag"),
    _f("sv_ts_ms", np.int64, (None,), "time the play ended", "time"),
    _f("sv_progress", np.float32, (None,), "play progress (fraction of the video)"),
    _f("sv_action", np.int32, (None,), "SV_ACTION_BITS set before the query time"),
    # live history of the user as of the query time, most recent first
    _f("lv_item", np.int64, (None,), "live-room id", "id"),
    _f("lv_author", np.int64, (None,), "live author id", "id"),
    _f("lv_category", np.int32, (None,), "live category"),
    _f("lv_ts_ms", np.int64, (None,), "time of the past exposure", "time"),
    _f("lv_watch_s", np.float32, (None,), "seconds watched, once known before the query time "
       "(0 when not clicked or not ended yet)"),
    _f("lv_action", np.int32, (None,), "LIVE_ACTION_BITS observed before the query time"),
    # ground truth for slicing; -1 / NaN when there is no oracle or for training samples
    _f("in_highlight", np.int32, (), "1 inside an oracle highlight at exposure time, 0 outside, -1 unknown", "host"),
    _f("oracle_p_click", np.float32, (), "oracle click probability (NaN unknown)", "host"),
    _f("oracle_p_no_highlight", np.float32, (), "oracle p without the highlight term (NaN unknown)", "host"),
    _f("oracle_p_no_affinity", np.float32, (), "oracle p without the user-author affinity term (NaN unknown)", "host"),
)

FIELD = {f.name: f for f in FIELDS}
# Fields that never leave the host (``contract.batch.host_batch`` drops them).
HOST_ONLY = tuple(f.name for f in FIELDS if f.host_only)
# Padded-batch fields the pipeline adds: valid history lengths (model inputs) and the row
# weight (0 for padding rows; read by the loss).
LENGTH_FIELDS = ("sv_len", "lv_len")
# Everything the model may read from a batch: the schema's model inputs plus the lengths.
# A training sample and a serving request for the same (user, live, query time) agree on all.
MODEL_INPUTS = tuple(f.name for f in FIELDS if f.model_input) + LENGTH_FIELDS
SEQUENCE_FIELDS = tuple(f.name for f in FIELDS if f.is_sequence)
SV_FIELDS = tuple(n for n in SEQUENCE_FIELDS if n.startswith("sv_"))
LV_FIELDS = tuple(n for n in SEQUENCE_FIELDS if n.startswith("lv_"))
OFFSETS = {"sv": "sv_offsets", "lv": "lv_offsets"}
DOMAINS = {"sv": SV_FIELDS, "lv": LV_FIELDS}
ACTION_BITS = {"sv": SV_ACTION_BITS, "lv": LIVE_ACTION_BITS}

# Histories by reference. On disk a sample does not copy its histories: each split keeps one
# *history store* per domain (every user's records, sorted by user then time; see
# ``history_store``) and a sample holds where its snapshot ends in it. Reading takes the
# ``{p}_hist_n`` records at positions end - 1, end - 2, ... (most recent first), stepping over
# position ``{p}_hist_skip`` (the sample's own live exposure, or -1), and derives the
# time-dependent fields (action bits, watch time) as of ``query_ts_ms``.
REF_FIELDS = (
    _f("sv_hist_end", np.int64, (), "end (exclusive) of the snapshot in the short-video store", "host"),
    _f("sv_hist_n", np.int64, (), "records in the short-video snapshot", "host"),
    _f("sv_hist_skip", np.int64, (), "short-video store position left out of the snapshot, -1 none", "host"),
    _f("lv_hist_end", np.int64, (), "end (exclusive) of the snapshot in the live store", "host"),
    _f("lv_hist_n", np.int64, (), "records in the live snapshot", "host"),
    _f("lv_hist_skip", np.int64, (), "live store position left out (the sample's own exposure), -1 none", "host"),
)
# What one stored sample holds: every non-sequence field plus the references.
STORED_FIELDS = tuple(f for f in FIELDS if not f.is_sequence) + REF_FIELDS


def pad_sequences(batch: dict, sv_len: int, lv_len: int) -> dict:
  """Turns a dict of lists of variable-length arrays into fixed-size padded arrays.

  Adds ``sv_len`` and ``lv_len`` (int32 valid lengths). Padding is 0 and lies after the valid
  items; sequences longer than the target are truncated (they are most recent first).
  """
  out = {}
  for name, value in batch.items():
    field = FIELD.get(name)
    if field is None or not field.is_sequence:
      out[name] = np.asarray(value)
      continue
    width = sv_len if name in SV_FIELDS else lv_len
    padded = np.zeros((len(value), width), field.dtype)
    for i, seq in enumerate(value):
      seq = np.asarray(seq, field.dtype)[:width]
      padded[i, : len(seq)] = seq
    out[name] = padded
  for prefix, width in (("sv", sv_len), ("lv", lv_len)):
    key = f"{prefix}_item"
    if key in batch:
      out[f"{prefix}_len"] = np.array([min(len(s), width) for s in batch[key]], np.int32)
  return out


def dummy_batch(batch_size: int, sv_len: int, lv_len: int, seed: int = 0) -> dict:
  """A random, schema-valid padded batch (for shape tests and synthetic benchmarks)."""
  rng = np.random.default_rng(seed)
  out = {}
  for f in FIELDS:
    shape = (batch_size,) + tuple(
        (sv_len if f.name in SV_FIELDS else lv_len) if d is None else d for d in f.shape)
    if f.name == "crowd":
      out[f.name] = rng.poisson(3.0, shape).astype(f.dtype)
    elif f.name in ("labels",):
      out[f.name] = (rng.random(shape) < 0.2).astype(f.dtype)
    elif f.name == "label_mask":
      out[f.name] = np.ones(shape, f.dtype)
    elif f.name.startswith("oracle_"):
      out[f.name] = np.full(shape, np.nan, f.dtype)
    elif f.name == "in_highlight":
      out[f.name] = np.full(shape, -1, f.dtype)
    elif f.dtype.kind == "f":
      out[f.name] = rng.random(shape).astype(f.dtype)
    else:
      out[f.name] = rng.integers(0, 1000, shape).astype(f.dtype)
  out["sv_len"] = rng.integers(0, sv_len + 1, batch_size).astype(np.int32)
  out["lv_len"] = rng.integers(0, lv_len + 1, batch_size).astype(np.int32)
  return out
