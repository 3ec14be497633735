"""Ahead-of-time compilation for TPU slices on this CPU-only machine (``mcjax.aot``,
``launch.compile``): slice names, a small model's train step compiled by the real TPU
compiler for v5p:2x2x2 (memory and collectives), and the one-line refusal of a config that
does not fit a chip."""

import os
import subprocess
import sys

import pytest

from mcjax.config import load_config
from mcjax.aot import topology

pytest.importorskip("libtpu")  # the TPU compiler: the test extra installs it (Linux)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name, chip, grid, chips", [
    ("v5p-8", "v5p", (2, 2, 1), 4),          # v5p-N counts TensorCores, 2 per chip
    ("v5p-256", "v5p", (4, 4, 8), 128),
    ("v5p:8x8x4", "v5p", (8, 8, 4), 256),
    ("v5e-16", "v5e", (4, 4), 16),           # v5e-N counts chips
    ("v5litepod-256", "v5e", (16, 16), 256),
    ("v4-32", "v4", (2, 2, 4), 16),
    ("V6E-8", "v6e", (2, 4), 8),
])
def test_slice_names(name, chip, grid, chips):
  t = topology.parse(name)
  assert (t.chip, t.grid, t.chips) == (chip, grid, chips)


@pytest.mark.parametrize("name, message", [
    ("v5p-6", "--topology=v5p-6: no documented v5p slice of 3 chips"),
    ("v5p-7", "--topology=v5p-7: v5p-N counts TensorCores, 2 per chip"),
    ("v9-8", "--topology=v9-8: unknown chip 'v9'"),
    ("v5e:4x4x4", "--topology=v5e:4x4x4: v5e slices are 2-d chip grids"),
    ("tpu", "--topology=tpu: not a TPU slice name"),
])
def test_bad_slice_names_are_refused_naming_the_flag(name, message):
  with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
    topology.parse(name)


def test_train_step_compiles_for_v5p_2x2x2():
  """The tiny model's train step on a 4 data x 2 model mesh of v5p:2x2x2's 8 chips: the TPU
  compiler's memory analysis is sane (the state's shards in, the same out through the
  donation, well under a chip's HBM) and its collectives are the expected ones: the dense
  gradients' all-reduce over "data", the row-sharded tables' reads over "model", and no
  collective made by the GSU's top-k (it stays on each batch shard)."""
  from mcjax.aot import compile_report
  printed = []
  result = compile_report.run(load_config("tiny"), "v5p:2x2x2", (4, 2), 8,
                              steps=("train", "score"), out=printed.append)
  text = "\n".join(printed)
  assert text.startswith("tiny on v5p:2x2x2 (8 chips, 95 GB HBM per chip), mesh 4 data x 2 "
                         "model, 8 examples per chip (global batch 64)")
  assert "| step | arguments | outputs | aliased (donated) | temporaries | total |" in text
  assert "Collectives of the train step, per chip per step:" in text
  train = result["steps"]["train"]
  mem = train["memory"]
  assert result["devices"] == 8 and result["hbm_per_device"] == 95e9
  assert 0 < mem["argument"] < 50e6 and 0 < mem["temp"] < 1e9
  assert mem["alias"] >= 0.9 * mem["output"]  # the donated state is updated in place
  assert mem["total"] < 1e9 and train["flops"] > 0
  kinds = {c["kind"] for c in train["collectives"]}
  assert "all-reduce" in kinds
  groups = {c["group"] for c in train["collectives"] if c["kind"] == "all-reduce"}
  assert {2, 4} <= groups  # dense gradients over "data" (4), table rows over "model" (2)
  assert not [c for c in train["collectives"] if "top_k" in c["op"]]
  score = result["steps"]["score"]  # the serving Scorer's forward, compiled on its own
  assert score["flops"] > 0 and score["memory"]["alias"] == 0
  assert 0 < score["memory"]["total"] < mem["total"]
  assert not [c for c in score["collectives"] if "top_k" in c["op"]]


def test_saved_executable_loads_and_runs_as_the_jitted_step(tmp_path):
  """``launch.compile --save``'s file: the train step compiled here (host devices, 4 data x 2
  model), saved, loaded back (``aot.executable``) and run on a real state and batch gives the
  jitted step's state and metrics bit for bit."""
  import jax
  import numpy as np
  from mcjax import runtime
  from mcjax.aot import executable, steps
  from mcjax.contract import batch as batch_lib, schema
  from mcjax.runtime import mesh as mesh_lib
  cfg = load_config("tiny")
  mesh = mesh_lib.make_mesh((4, 2), jax.devices()[:8])
  built = steps.abstract_steps(cfg, mesh, 4)
  (compiled, _), = steps.compile_steps(built, ("train",)).values()
  path = str(tmp_path / "step.aot")
  executable.save(path, {"train": compiled})
  loaded = executable.load(path, "train")
  m = cfg.moment
  host = batch_lib.host_batch(schema.dummy_batch(32, int(m.sv_hist_len), int(m.lv_hist_len)))
  batch = jax.device_put(host, mesh_lib.batch_sharding(mesh))
  rt, twin = runtime.build(cfg, mesh), runtime.build(cfg, mesh).state  # equal fresh states
  want_state, want = rt.train_step(rt.state, batch)
  got_state, got = loaded(twin, batch)
  for a, b in zip(jax.tree.leaves((want_state, want)), jax.tree.leaves((got_state, got))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_launcher_refuses_a_config_that_does_not_fit_in_one_line():
  """10^9-row sv_item table, held whole by each of v5e-8's chips (8 data x 1 model): the
  arguments alone exceed 16 GB; one line naming the largest buffers, exit status 1, before
  any compiling."""
  proc = subprocess.run(
      [sys.executable, "-m", "launch.compile", "--config=mcjax/configs/tiny.py",
       "--topology=v5e-8", "--layout=8x1", "--batch_per_chip=8",
       "--config.model.embedding.vocab.sv_item=1000000000"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith("compile: the train step needs ")
  assert "over the chip's 16.00 GB HBM; largest buffers per chip: state/" in lines[0]
  assert "sv_item" in lines[0] and lines[0].endswith("(arguments alone)")
