"""Scores requests with a trained run: per-task probabilities and the Ranking_Score, ranked.

    python -m launch.score --workdir=runs/tiny --log=runs/tiny/world \
        --requests=requests.parquet --out=scores.parquet

--requests: one row per candidate, columns request_id, user_id, ts_ms, live_id (int64).
--out: the same rows ranked within each request (rank 0 = best), with ranking_score and one
p_<task> column per task. Features are built from --log with the Moment engine's code (events
strictly before ts_ms). Unknown user/live ids are scored and counted; requests before the log's
first event are refused, after its last one warned about (their features stop at the log's end).

Ids and times must be integers (an integer column, or decimal text that parses exactly); a
float, NaN, fraction, negative or out-of-range value, an empty file, a request_id with several
users or times, and a live listed twice in one request are refused with one line naming the
column and row (``mcjax.serve.ids``). --out may not be, contain or lie inside any input (the
requests, the log, the run's config.json and ckpt/); an
existing --out needs --overwrite and must be a Parquet file; it is written beside and renamed
into place, so a failed or killed run leaves the old file (or none), never a part.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

import launch

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's folder (config.json, ckpt/).",
                               required=True)
_LOG = flags.DEFINE_string("log", None, "Event-log folder the features are built from.",
                           required=True)
_REQUESTS = flags.DEFINE_string("requests", None, "Parquet: request_id, user_id, ts_ms, live_id.",
                                required=True)
_OUT = flags.DEFINE_string("out", None, "Output Parquet file.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out Parquet file "
                               "(never a folder, another file, or an input).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_CHUNK = flags.DEFINE_integer("chunk_rows", 4096, "Candidates whose features are built at once.",
                              lower_bound=1)

COLUMNS = ("request_id", "user_id", "ts_ms", "live_id")


def run_inputs(workdir: str) -> dict[str, str]:
  """What scoring and exporting read of a training run (an output may sit beside them in the
  run's folder, e.g. WORKDIR/export, but never on or around them)."""
  return {"--workdir's config.json": os.path.join(workdir, "config.json"),
          "--workdir's ckpt": os.path.join(workdir, "ckpt")}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep the output readable (orbax logs every read)
  import numpy as np
  import pyarrow as pa
  import pyarrow.parquet as pq
  from tqdm import tqdm

  from mcjax.contract.schema import TASKS
  from mcjax.eventlog import files
  from mcjax.serve import Scorer, ids
  files.check_output(_OUT.value, "--out", reads={
      "--requests": _REQUESTS.value, "--log": _LOG.value, **run_inputs(_WORKDIR.value)},
      overwrite=_OVERWRITE.value, kind="a Parquet file", magic=b"PAR1")
  where = f"--requests={_REQUESTS.value}"
  if not os.path.isfile(_REQUESTS.value):
    sys.exit(f"FATAL {where}: " + ("a folder, not a Parquet file" if
                                   os.path.isdir(_REQUESTS.value) else "no such file"))
  try:
    table = pq.read_table(_REQUESTS.value)
  except (OSError, pa.ArrowInvalid) as e:
    sys.exit(f"FATAL {where}: not a readable Parquet file ({' '.join(str(e).split())[:300]})")
  missing = [c for c in COLUMNS if c not in table.column_names]
  if missing:
    sys.exit(f"FATAL {where}: missing column(s) {missing}")
  req = {c: ids.column_ids(table, c, where) for c in COLUMNS}
  ids.check_requests(req, where)
  try:
    scorer = Scorer.from_workdir(_WORKDIR.value, log=_LOG.value, step=_STEP.value)
  except FileNotFoundError as e:
    sys.exit(f"FATAL {e}")
  builder = scorer.requests
  before, after = builder.outside(req["ts_ms"])
  lo, hi = builder.time_range
  if before:
    sys.exit(f"FATAL --requests: {before} row(s) have ts_ms before the first event of --log "
             f"({lo}); nothing in the log describes that time (ms since the epoch expected)")
  if after:
    print(f"WARNING {after} of {len(req['ts_ms'])} row(s) have ts_ms after the last event of "
          f"--log ({hi}): their features stop at the log's end")
  unseen = builder.unseen(req["user_id"], req["live_id"])
  print(f"unseen ids (scored with hashed ids, side features -1): {unseen['users']} of "
        f"{len(np.unique(req['user_id']))} users, {unseen['lives']} of "
        f"{len(np.unique(req['live_id']))} lives")
  n = len(req["ts_ms"])
  probs = np.zeros((n, len(TASKS)), np.float32)
  score = np.zeros(n, np.float32)
  with tqdm(total=n, desc="score", unit="cand") as bar:
    for lo in range(0, n, _CHUNK.value):
      s = slice(lo, lo + _CHUNK.value)
      batch = builder.batch(req["user_id"][s], req["ts_ms"][s], req["live_id"][s])
      probs[s], score[s] = scorer.score_batch(batch)
      bar.update(len(batch["user_id"]))
  order = np.lexsort((-score, req["request_id"]))
  rid = req["request_id"][order]
  first = np.r_[True, rid[1:] != rid[:-1]]
  rank = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
  out = {c: req[c][order] for c in COLUMNS} | {"rank": rank, "ranking_score": score[order]}
  out |= {f"p_{t}": probs[order, i] for i, t in enumerate(TASKS)}
  with files.staged_file(_OUT.value) as tmp:
    pq.write_table(pa.table(out), tmp)
  print(f"scored {n} candidates of {int(first.sum())} requests with step {scorer.step} of "
        f"{_WORKDIR.value} -> {_OUT.value}")


if __name__ == "__main__":
  launch.run(main)
