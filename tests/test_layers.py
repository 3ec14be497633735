"""Data flows one way: no module of mcjax imports from a layer above its own.

event log -> sample contract -> (log producers) -> Moment engine -> sample shards + pipeline ->
model -> configs -> train step -> trainer -> scoring -> reports; launchers, benchmarks and
experiments are above all of them and nothing in the package imports them.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The rank of each top-level part of the package; a module may import its own rank or lower.
RANKS = {
    "mcjax.version": 0,      # the package version
    "mcjax.eventlog": 0,     # the event-log contract, atomic files
    "mcjax.contract": 1,     # the sample contract: schema, history store
    "mcjax.metrics": 1,      # pure array metrics (AUC, logloss) over TASKS
    "mcjax.sim": 2,          # log producers: the simulated world, converters
    "mcjax.convert": 2,
    "mcjax.moment": 3,       # the Moment engine
    "mcjax.samples": 4,      # shards, the Beam pipeline, the Grain pipeline
    "mcjax.stream": 4,       # event sources and the stream engine (samples as they happen)
    "mcjax.model": 5,
    "mcjax.losses": 5,
    "mcjax.loss_config": 5,  # the loss section of the config (no JAX)
    "mcjax.config": 6,       # run configs: name every layer's knobs
    "mcjax.configs": 6,
    "mcjax.distributed": 6,
    "mcjax.runtime": 7,      # mesh, partition rules, state, checkpoints, the steps: build()
    "mcjax.train": 8,        # the training loop, time plans, run folder, evaluation
    "mcjax.serve": 8,        # scoring a trained run (restores through the runtime)
    "mcjax.aot": 8,          # ahead-of-time compilation for TPU slices (over the runtime)
    "mcjax.report": 9,
    "mcjax.highlight_freshness": 9,  # rise of served p(click) after highlight onsets (reports)
}


def _modules():
  for root, _, files in os.walk(os.path.join(ROOT, "mcjax")):
    for f in sorted(files):
      if f.endswith(".py"):
        path = os.path.join(root, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        yield name.removesuffix(".__init__"), path


def _part(module: str) -> str | None:
  parts = module.split(".")
  return ".".join(parts[:2]) if len(parts) > 1 else None


def _imports(path: str):
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "mcjax":
        yield from (f"mcjax.{a.name}" for a in node.names)
      else:
        yield node.module
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names)


def test_every_part_of_the_package_has_a_rank():
  parts = {_part(m) for m, _ in _modules()} - {None}
  assert parts <= set(RANKS), f"add these to RANKS: {sorted(parts - set(RANKS))}"


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda x: str(x))
def test_no_upward_import(module, path):
  own = _part(module)
  if own is None:  # mcjax/__init__.py: the public API, above everything
    return
  for target in _imports(path):
    top = target.split(".")[0]
    assert top not in ("launch", "experiments", "benchmarks", "tests"), (
        f"{module} imports {target}: the package never imports its programs")
    if top != "mcjax" or _part(target) in (None, own):
      continue
    assert RANKS[_part(target)] <= RANKS[own], (
        f"{module} (layer {own}, rank {RANKS[own]}) imports {target} (layer "
        f"{_part(target)}, rank {RANKS[_part(target)]}): data flows one way")


def _python_files(top: str):
  for root, _, files in os.walk(os.path.join(ROOT, top)):
    yield from (os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))


@pytest.mark.parametrize("top", ["mcjax/serve", "benchmarks"])
def test_serving_and_benchmarks_use_the_runtime_not_the_trainer(top):
  """Scoring and the benchmarks build their steps through ``mcjax.runtime``; the training
  loop's package (``mcjax.train``) is above them in spirit, never a dependency."""
  for path in _python_files(top):
    bad = [t for t in _imports(path) if t == "mcjax.train" or t.startswith("mcjax.train.")]
    assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad[0]}: use mcjax.runtime"
