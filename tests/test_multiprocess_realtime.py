"""Two processes on localhost (``jax.distributed.initialize``, gloo collectives, 2 host
devices each, a ("data", "model") = (2, 2) mesh: each process trains on its half of every
batch, the tables row-sharded inside it) run ``launch.realtime`` on the small world replayed
through the stream engine, are stopped by Ctrl-C in process 1 alone after step 5 (both stop
at the same table), resume, and end bit for bit where one process with 4 devices and the same
global batch ends: the state's sha256, steps, trained rows, checksum and every metric of
metrics.json. Versions are published by wall time (``realtime.publish_every_s`` tiny: after
every step, on process 0's clock), the decision the processes must take together."""

import json
import os
import subprocess
import sys

import portpicker
import pytest
import trainer_fixtures as fx

from xla_flags import FAST_COMPILE

TRAIN_ROWS = 400  # the replay is cut where the 400th training sample is emitted (11 steps)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """(session folder, log folder, the --until_min that cuts TRAIN_ROWS training samples)."""
  from mcjax import config as mcconfig
  from mcjax.moment.engine import build_samples
  from mcjax.sim import world as world_lib
  root = str(tmp_path_factory.mktemp("mp_realtime"))
  cfg = fx.tiny_config()
  log = os.path.join(root, "world")
  world_lib.build(log, cfg.data.preset, cfg.data.world_seed)
  s = build_samples(log, mcconfig.moment_config(cfg))
  first = min(int(s[k]["sample_ts_ms"][0]) for k in ("train", "eval"))
  return root, log, (int(s["train"]["sample_ts_ms"][TRAIN_ROWS]) - first) / 60_000


def _start(world, work: str, *flags: str, devices: int, log: str,
           mesh: str = "(2,2)") -> subprocess.Popen:
  root, events, minutes = world
  argv = [sys.executable, "-m", "launch.realtime", f"--config={fx.TINY}", f"--workdir={work}",
          f"--config.data.log_dir={events}", f"--until_min={minutes}",
          "--config.realtime.publish_every_steps=0", "--config.realtime.publish_every_s=1e-6",
          "--config.train.checkpoint_every_steps=3", f"--config.mesh.shape={mesh}",
          "--config.realtime.max_wait_ms=600000", *flags]  # part-filled batches every 10 min
  env = fx.env(fx.Session(root, events, "", os.path.join(root, "jax_cache")), devices)
  env["XLA_FLAGS"] = " ".join((f"--xla_force_host_platform_device_count={devices}",)
                              + FAST_COMPILE)
  out = open(log, "ab")
  try:
    return subprocess.Popen(argv, cwd=fx.REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
  finally:
    out.close()


def _two(world, work: str, *flags_of: tuple[str, ...]) -> None:
  """``launch.realtime`` in two processes of 2 devices; ``flags_of[i]``: process i's own."""
  port = portpicker.pick_unused_port()
  logs = [f"{work}.{i}.log" for i in range(2)]
  procs = [_start(world, work, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", *flags_of[i], devices=2, log=logs[i])
           for i in range(2)]
  fx.wait_all(procs, logs)


def _metrics(work: str) -> dict:
  with open(os.path.join(work, "metrics.json")) as f:
    return json.load(f)


def test_two_processes_run_the_loop_like_one(world):
  root = world[0]
  one, two = os.path.join(root, "one"), os.path.join(root, "two")
  single = _start(world, one, devices=4, log=one + ".log")  # side by side with the two
  _two(world, two, (), ("--interrupt_at_step=5",))  # Ctrl-C in process 1 only
  part = _metrics(two)["realtime"]  # written by process 0, which was not interrupted itself
  assert part["stopped"] and part["steps"] == 5, part["steps"]
  _two(world, two, (), ())  # resumed from the checkpoint of step 5 and process 0's snapshot
  fx.wait(single, one + ".log")

  a, b = _metrics(one), _metrics(two)
  ra, rb = a["realtime"], b["realtime"]
  assert rb["steps_this_run"] < rb["steps"] and not rb["stopped"]  # resumed, not restarted
  for key in ("state_sha256", "steps", "trained_rows", "checksum"):
    assert ra[key] == rb[key], key
  assert rb["trained_rows"] == TRAIN_ROWS and rb["steps"] == 11
  # a version after every step (the resumed run serves step 5 again first)
  assert [v["step"] for v in ra["versions"]] == list(range(12))
  assert [v["step"] for v in rb["versions"]] == list(range(5, 12))
  assert b["overall"]["ctr"]["auc"] == a["overall"]["ctr"]["auc"]
  fx.assert_metrics_close({k: v for k, v in b.items() if k != "realtime"},
                          {k: v for k, v in a.items() if k != "realtime"}, rtol=0, atol=0)
  assert "Traceback" not in fx.tail(f"{two}.1.log", 100_000)


@pytest.mark.parametrize("name, mesh, flag, says", [
    ("mesh", "(1,4)", "--source=replay", "data axis (1 of mesh (1, 4)) is not divisible by"),
    ("redis", "(2,2)", "--source=redis://127.0.0.1:1/events", "a Redis consumer group"),
])
def test_two_processes_refuse_what_they_cannot_share(world, name, mesh, flag, says):
  """A mesh whose data axis the processes cannot split, and a Redis source: one FATAL line
  in each process, before any device work."""
  work = os.path.join(world[0], f"refused_{name}")
  port = portpicker.pick_unused_port()
  logs = [f"{work}.{i}.log" for i in range(2)]
  procs = [_start(world, work, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", flag, devices=2, log=logs[i], mesh=mesh)
           for i in range(2)]
  for p, log in zip(procs, logs):
    assert p.wait(timeout=fx.RUN_TIMEOUT_S) == 1, fx.tail(log)
    out = fx.tail(log, 100_000)
    fatal = [line for line in out.splitlines() if line.startswith("FATAL")]
    assert len(fatal) == 1 and says in fatal[0] and "Traceback" not in out, out[-3000:]
  assert not os.path.exists(os.path.join(work, "ckpt"))
