"""Writes the tiny example event log next to this script (run from the repository root).

    python -m data.example.make_example

Two users, one live room and two short videos by two authors, four exposures; the tables
are what ``data/README.md`` shows. ``example_tables()`` is also used by the tests.
"""

from __future__ import annotations

import os

import pyarrow as pa

T0 = 1_746_057_600_000  # 2025-05-01 00:00:00 UTC, in ms

# (ts offset ms, user, exposure, domain, item, author, event, value)
_ROWS = [
    (0, 1, 0, "live", 100, 10, "exposure", 0.0),
    (500, 1, 0, "live", 100, 10, "click", 0.0),
    (10_000, 2, 1, "live", 100, 10, "exposure", 0.0),
    (12_000, 2, 2, "short_video", 201, 11, "exposure", 0.0),
    (15_000, 2, 2, "short_video", 201, 11, "follow", 0.0),
    (15_000, 2, 2, "short_video", 201, 11, "watch_end", 3.0),
    (20_000, 1, 0, "live", 100, 10, "like", 0.0),
    (40_000, 1, 0, "live", 100, 10, "gift", 5.0),
    (65_000, 1, 0, "live", 100, 10, "watch_end", 64.5),
    (70_000, 1, 3, "short_video", 200, 10, "exposure", 0.0),
    (85_000, 1, 3, "short_video", 200, 10, "like", 0.0),
    (85_000, 1, 3, "short_video", 200, 10, "watch_end", 15.0),
]


def example_tables() -> tuple[pa.Table, dict[str, pa.Table]]:
  """The example log as (events, side tables), in the contract's types."""
  from mcjax.eventlog import schema as S
  cols = list(zip(*_ROWS))
  events = pa.table({
      "ts_ms": [T0 + t for t in cols[0]], "user_id": cols[1], "exposure_id": cols[2],
      "domain": cols[3], "item_id": cols[4], "author_id": cols[5], "event": cols[6],
      "value": cols[7]}, schema=S.EVENT_SCHEMA)
  side = {
      "users.parquet": pa.table({"user_id": [1, 2], "age_bucket": [2, 4], "gender": [1, 2],
                                 "activity_bucket": [3, 1]}, schema=S.USER_SCHEMA),
      "authors.parquet": pa.table({"author_id": [10, 11], "category": [7, 9],
                                   "fans_bucket": [12, 5], "is_live_author": [True, False],
                                   "is_video_author": [True, True]}, schema=S.AUTHOR_SCHEMA),
      "lives.parquet": pa.table({"live_id": [100], "author_id": [10], "category": [7],
                                 "start_ms": [T0 - 600_000], "end_ms": [T0 + 3_600_000]},
                                schema=S.LIVE_SCHEMA),
      "videos.parquet": pa.table({"video_id": [200, 201], "author_id": [10, 11],
                                  "category": [7, 9], "tag": [70, 90],
                                  "duration_s": [15.0, 7.5]}, schema=S.VIDEO_SCHEMA),
  }
  return events, side


def main() -> None:
  from mcjax.eventlog import io, validate
  events, side = example_tables()
  validate.validate_tables(events, side)
  out = os.path.dirname(os.path.abspath(__file__))
  tmp = io.write_log(os.path.join(out, ".build"), events, side, overwrite=True)
  for name in os.listdir(tmp):
    os.replace(os.path.join(tmp, name), os.path.join(out, name))
  os.rmdir(tmp)


if __name__ == "__main__":
  main()
