"""How the Beam sample engine keys its work (``Layout``): buckets, salts, crowd and write
ranges, part and spill sizes, and how they scale with the log."""

from __future__ import annotations

import dataclasses

import numpy as np

from mcjax.moment import crowd


AUTO_BUCKET_EVENTS = 400_000
MIN_AUTO_BUCKETS = 16
AUTO_WRITE_EVENTS = 2_000_000
MIN_WRITE_RANGE_MS = 60_000


@dataclasses.dataclass(frozen=True)
class Layout:
  """How work is keyed.

  Attributes:
    buckets: hash buckets of exposures, lives, videos, authors; range buckets of users. 0:
      one per ``AUTO_BUCKET_EVENTS`` events of the log, at least ``MIN_AUTO_BUCKETS``.
    salts: each live / video / author bucket's exposures are spread over this many keys for
      the side-table joins (a hot live's exposures go to ``salts`` workers; its side-table row
      is copied to each).
    crowd_range_ms: the crowd features of a live are computed per time range of this length
      (>= 5 min, the longest window), with counts carried across range boundaries.
    write_range_ms: samples are written in one part per time range of this length (several
      parts of at most ``part_rows`` when a range holds more). 0: the log's time span cut
      into one range per ``AUTO_WRITE_EVENTS`` events (whole minutes, at least one).
    part_rows: samples per written part at most.
    spill_rows: a batch of at least this many rows travels between stages as a file in the
      scratch folder (its name goes through the runner); smaller ones travel inline. 0:
      every batch inline (the runner then buffers the whole log between stages).
  """
  buckets: int = 0
  salts: int = 4
  crowd_range_ms: int = 6 * 3_600_000
  write_range_ms: int = 0
  part_rows: int = 256 * 1024
  spill_rows: int = 4096

  def validate(self) -> "Layout":
    for name in ("salts", "part_rows"):
      if getattr(self, name) < 1:
        raise ValueError(f"Layout.{name}={getattr(self, name)}: expected >= 1")
    for name in ("buckets", "write_range_ms", "spill_rows"):
      if getattr(self, name) < 0:
        raise ValueError(f"Layout.{name}={getattr(self, name)}: expected >= 0")
    if self.crowd_range_ms < crowd.MAX_WINDOW_MS:
      raise ValueError(f"Layout.crowd_range_ms={self.crowd_range_ms}: expected >= "
                       f"{crowd.MAX_WINDOW_MS} (the longest crowd window)")
    return self

  def resolve(self, events: int, span_ms: int) -> "Layout":
    """This layout for a log of ``events`` events over ``span_ms`` (its automatic fields, 0,
    made numbers): a key's share of a bigger log stays about the same size."""
    out = self
    if not self.buckets:
      out = dataclasses.replace(out, buckets=max(MIN_AUTO_BUCKETS,
                                                 -(-events // AUTO_BUCKET_EVENTS)))
    if not self.write_range_ms:
      ranges = max(1, -(-events // AUTO_WRITE_EVENTS))
      minutes = -(-max(int(span_ms), 1) // (ranges * MIN_WRITE_RANGE_MS))
      out = dataclasses.replace(out, write_range_ms=max(1, minutes) * MIN_WRITE_RANGE_MS)
    return out

  def own_range(self, ts: np.ndarray) -> np.ndarray:
    """The crowd range whose carry an event at ``ts`` is summed into: range k covers
    [k R - 5 min, (k + 1) R - 5 min), the events a query in [k R, (k + 1) R) may need."""
    return (np.asarray(ts, np.int64) + crowd.MAX_WINDOW_MS) // self.crowd_range_ms

  def query_range(self, q: np.ndarray) -> np.ndarray:
    return np.asarray(q, np.int64) // self.crowd_range_ms
