"""The real-time loop in one command: events -> stream engine -> continuous trainer -> served
versions.

    # unpaced: part-filled batches once a minute of event time (the windowed replay's cadence)
    python -m launch.realtime --config=mcjax/configs/full.py --workdir=runs/rt \
        --config.realtime.max_wait_ms=60000
    python -m launch.realtime --config=mcjax/configs/tiny.py --workdir=/tmp/rt \
        --config.realtime.speed=100 --config.realtime.max_wait_ms=100000 \
        --config.realtime.request_rate=20 --until_min=180
    # through a broker: publish the log into Redis (launch.publish), the loop reads the stream
    python -m launch.realtime --config=mcjax/configs/tiny.py --workdir=/tmp/rt_redis \
        --config.data.log_dir=WORLD --source=redis://127.0.0.1:6379/events
    # and the same loop with on_close samples and without crowd features, compared
    python -m launch.realtime --config=mcjax/configs/tiny.py --workdir=runs/rt_cmp \
        --config.realtime.max_wait_ms=60000 --compare=on_close,no_crowd
    # several processes: the same command in each, with the flags of launch.train
    python -m launch.realtime --config=mcjax/configs/tiny.py --workdir=runs/rt_2p \
        --config.mesh.shape='(2,2)' --coordinator=HOST:PORT --num_processes=2 --process_id=I

The events of the log (``--config.data.log_dir``, else the simulated world of
``config.data``, made in the workdir when missing) go through the stream engine
(``mcjax.stream``) as they arrive: by default a replay of the log at ``config.realtime.speed``
(logged seconds per wall second; 0: as fast as the loop takes them); ``--source=redis://...``
reads a Redis stream instead (paced by its publisher; the log folder still gives the
requests' features and the oracle). ``--source=batch`` replays the samples ``build_samples``
makes of the log, in emission order (the same items for an in-order log; ``--from_min`` and
``--inject_nan_at_row`` need it). The trainer trains on them in micro-batches, publishes a parameter version every
``realtime.publish_every_s`` / ``publish_every_steps``, and every evaluation record is scored
by the version served when it is emitted. A progress line shows events/s and the watermark
lag (stream sources), samples/s, steps/s, the version served, the lag behind the schedule and
the CTR AUC of the last 5,000 records whose labels have arrived (the engine lets labels out
in exposure order, so they trail by the longest watch still open: "nan" early in a run).

Writes ``WORKDIR/metrics.json`` (the batch modes' blocks plus ``realtime``: freshness, lag,
bytes per version, request latency) and ``WORKDIR/report.md`` with its plots. A rerun of the
workdir resumes from its latest checkpoint (exactly once: same parameters as an
uninterrupted run). ``--publish_dir`` also writes every version for a scorer in another
process (``mcjax.serve.versions.DirVersions``): with ``realtime.publish_delta`` (default) as
the table rows that changed since the version before plus the dense variables, a whole
version every ``realtime.full_every``. Ctrl-C (or SIGTERM) stops the loop at the next
emitted table, writes a checkpoint, and writes metrics.json and report.md of what ran (a rerun
goes on from the checkpoint). A diverging step stops the loop before that
state is published or checkpointed, with one ``FATAL`` line naming the step and the loss
terms, and exit status 1.

Several processes (``--coordinator``/``--num_processes``/``--process_id``, or a cluster
launcher's environment: ``jax.distributed.initialize`` first) each run the loop on the same
replay (``--source=replay`` or ``batch``) and train on their slice of every batch; process 0
writes the workdir, the report and ``--publish_dir`` (docs/realtime.md, "Several
processes"). A Redis source or ``realtime.request_rate`` > 0 with several processes is
refused with one ``FATAL`` line.

``--compare=on_close,no_crowd`` then runs the same loop (same log, source, flags and
overrides; unpaced, no request load; a Redis source is replaced by a replay of the log) with
each switch of ``mcjax.highlight_freshness.SWITCHES`` (on_close: ``moment.mode=on_close``;
no_crowd: ``model.use_crowd=False``) into ``WORKDIR/compare/NAME`` (a finished one is reused,
an interrupted one resumes), and report.md compares the served p(click) around highlight
onsets of the three runs (the log's oracle highlights): ``compare.png`` and the rise-delay
table.
"""

from __future__ import annotations

import copy
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import launch
from mcjax import configs
from mcjax.highlight_freshness import SWITCHES

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path("full"), "A config file (e.g. mcjax/configs/tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics, checkpoints and the report go.",
                               required=True)
_PUBLISH_DIR = flags.DEFINE_string("publish_dir", None, "Also write every version here, for "
                                   "a scorer in another process.")
_SOURCE = flags.DEFINE_string("source", "replay", "replay (the log through the stream engine), "
                              "redis://host:port/STREAM, or batch (build_samples replayed).")
_UNTIL_MIN = flags.DEFINE_float("until_min", 0.0, "Replay only the first this many logged "
                                "minutes of samples (0: all).")
_FROM_MIN = flags.DEFINE_float("from_min", 0.0, "Start the replay this many logged minutes into "
                               "the samples (the model starts fresh there).")
_KILL_AT_STEP = flags.DEFINE_integer("kill_at_step", None, "Fault injection (tests): SIGKILL "
                                     "this process right after that train step.")
_INTERRUPT_AT_STEP = flags.DEFINE_integer("interrupt_at_step", None, "Fault injection "
                                          "(tests): SIGINT (Ctrl-C) this process right after "
                                          "that train step.")
_NAN_AT_ROW = flags.DEFINE_integer("inject_nan_at_row", None, "Fault injection (tests; "
                                   "--source=batch): training samples from this row on get NaN "
                                   "crowd features.")
_INITIALIZE = launch.define_distributed_flags()  # --coordinator, --num_processes, ...
_COMPARE = flags.DEFINE_list("compare", [], "After the run, the same loop with each of these "
                             f"switches ({', '.join(SWITCHES)}) into WORKDIR/compare/NAME; "
                             "report.md compares their highlight freshness.")


def load_samples(cfg, log_dir: str, until_min: float, from_min: float = 0.0) -> dict:
  """The engine's samples of ``log_dir`` (both splits) emitted in [``from_min``,
  ``until_min``) logged minutes from the first (``until_min`` 0: to the end)."""
  import numpy as np
  from mcjax import config as mcconfig
  from mcjax.moment.engine import build_samples
  from mcjax.samples.table import table_slice
  s = build_samples(log_dir, mcconfig.moment_config(cfg))
  first = min(int(s[k]["sample_ts_ms"][0]) for k in ("train", "eval"))
  lo, hi = (first + int(m * 60_000) for m in (from_min, until_min))
  out = {}
  for k in ("train", "eval"):
    ts = s[k]["sample_ts_ms"]
    end = int(np.searchsorted(ts, hi)) if until_min > 0 else len(ts)
    out[k] = table_slice(s[k], int(np.searchsorted(ts, lo)), end)
  return out


def make_source(cfg, spec: str, log_dir: str, nan_at_row: int | None = None):
  """The loop's source for ``--source=spec`` (module docstring), cut by ``--until_min`` and
  ``--from_min``; ValueError or OSError when it cannot be opened."""
  if spec == "batch":
    source = load_samples(cfg, log_dir, _UNTIL_MIN.value, _FROM_MIN.value)
    if nan_at_row is not None:
      source["train"]["crowd"] = source["train"]["crowd"].copy()
      source["train"]["crowd"][nan_at_row:] = float("nan")
    return source
  from mcjax.train.realtime import stream_source
  return stream_source(cfg, spec, log_dir, _UNTIL_MIN.value)


def run_compare(cfg, spec: str, log_dir: str, work: str, names: list[str]) -> dict[str, str]:
  """The loop again with each switch of ``names`` (module docstring); {name: workdir} of the
  runs that finished (a Ctrl-C stops at the one it interrupted)."""
  import jax
  from mcjax import config as mcconfig
  from mcjax.train import realtime
  done = {}
  for name in names:
    sub = os.path.join(work, "compare", name)
    finished = os.path.join(sub, "metrics.json")
    if os.path.exists(finished):
      with open(finished) as f:
        if not json.load(f)["realtime"].get("stopped"):  # reused
          done[name] = sub
          continue
    c = copy.deepcopy(cfg)
    key, value = SWITCHES[name]
    section, field = key.split(".")
    c[section][field] = value
    c.realtime.speed, c.realtime.request_rate = 0.0, 0.0
    mcconfig.validate(c)
    source = make_source(c, "batch" if spec == "batch" else "replay", log_dir)
    main = jax.process_index() == 0
    out = realtime.run_loop(c, source, sub, log_dir=log_dir,
                            progress=(lambda line, n=name: print(f"[{n}] {line}", flush=True))
                            if main else None)
    r, ctr = out["realtime"], out["overall"].get("ctr", {})
    print(f"compare {name} ({key}={value}): CTR AUC {ctr.get('auc')}, {r['steps']} steps, "
          f"{r['trained_rows']} samples in {r['wall_s']} s -> {sub}", flush=True)
    if r.get("stopped"):
      break
    done[name] = sub
  return done


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = [n for n in _COMPARE.value if n not in SWITCHES]
  if unknown:
    sys.exit(f"FATAL --compare={','.join(_COMPARE.value)}: unknown {unknown[0]!r}; expected "
             f"names among {', '.join(SWITCHES)}")
  logging.set_verbosity(logging.WARNING)
  cfg, work = _CONFIG.value, _WORKDIR.value
  from mcjax import config as mcconfig
  from mcjax import distributed
  from mcjax.train import RunError
  from mcjax.runtime import mesh as mesh_lib
  from mcjax.train import realtime as realtime_lib
  spec = _SOURCE.value
  if spec not in ("replay", "batch") and not spec.startswith("redis://"):
    sys.exit(f"FATAL --source={spec}: expected replay, batch or redis://host:port/STREAM")
  try:
    mcconfig.validate(cfg)
  except ValueError as e:
    sys.exit(f"FATAL invalid config: {e}")
  _INITIALIZE()  # several processes: before any device work
  import jax
  try:
    mesh_lib.check_layout(cfg)
  except ValueError as e:
    sys.exit(f"FATAL invalid config: {e}")
  try:
    realtime_lib.check_processes(cfg, spec, jax.process_count())
  except ValueError as e:
    sys.exit(f"FATAL {e}")
  main_process = distributed.is_main()
  log_dir = cfg.data.log_dir
  if not log_dir:
    from mcjax.sim import world
    log_dir = os.path.join(work, "world")
    if main_process and not os.path.exists(log_dir):
      world.build(log_dir, cfg.data.preset, cfg.data.world_seed)
    distributed.sync("world")
  if not os.path.isdir(log_dir):
    sys.exit(f"FATAL --config.data.log_dir={log_dir}: not a folder")
  if spec != "batch" and (_FROM_MIN.value or _NAN_AT_ROW.value is not None):
    sys.exit("FATAL --from_min and --inject_nan_at_row need --source=batch")
  try:
    source = make_source(cfg, spec, log_dir, _NAN_AT_ROW.value)
  except (ValueError, OSError) as e:
    sys.exit(f"FATAL --source={spec}: {e}")
  from launch import realtime_report
  from mcjax.train import realtime
  try:
    out = realtime.run_loop(cfg, source, work, log_dir=log_dir, publish_dir=_PUBLISH_DIR.value,
                            kill_at_step=_KILL_AT_STEP.value,
                            interrupt_at_step=_INTERRUPT_AT_STEP.value,
                            progress=(lambda line: print(line, flush=True)) if main_process
                            else None)
  except RunError as e:
    sys.exit(f"FATAL {e}")
  compared = None
  if _COMPARE.value and not out["realtime"].get("stopped"):
    try:
      compared = run_compare(cfg, spec, log_dir, work, _COMPARE.value)
    except (RunError, ValueError, OSError) as e:
      sys.exit(f"FATAL --compare: {e}")
  if not main_process:  # process 0 writes the report and says where
    return
  realtime_report.write(work, out, compared=compared, log_dir=log_dir,
                        wanted=_COMPARE.value)
  r, ctr = out["realtime"], out["overall"].get("ctr", {})
  print(f"{cfg.name} realtime: CTR AUC {ctr.get('auc')}, {r['steps']} steps, "
        f"{r['trained_rows']} samples in {r['wall_s']} s ({r['speed_factor']}x real time), "
        f"freshness end to end p50 {r['freshness']['end_to_end_s'].get('p50')} s -> "
        f"{work}/metrics.json, {work}/report.md")


if __name__ == "__main__":
  app.run(main)
