"""Prints a config's model size and cost: parameters per embedding table and dense, and
FLOPs per example (XLA cost analysis of the compiled forward and forward + backward pass).

    python -m launch.model_info --config=mcjax/configs/full.py
    python -m launch.model_info --config=mcjax/configs/full.py --config.moment.sv_hist_len=1000
    python -m launch.model_info --keys     # every config key, its default and its meaning

``--keys`` imports no JAX: it lists ``mcjax.config.describe_keys()``, the keys any launcher
overrides with ``--config.a.b=v``.
"""

from __future__ import annotations

from absl import app, flags
from tabulate import tabulate

import launch
from mcjax import configs

_CONFIG = launch.define_config_file(
    "config", configs.path("full"), "A config file (e.g. mcjax/configs/smoke.py).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch used to compile the FLOP count.")
_KEYS = flags.DEFINE_bool("keys", False, "Print every config key with its default and meaning.")


def print_keys() -> None:
  """One line per key of ``mcjax.config.default_config()``: ``key = default  # meaning``."""
  from mcjax import config as mcconfig  # pylint: disable=g-import-not-at-top
  for key, value, doc in mcconfig.describe_keys():
    print(f"{key} = {value!r}  # {doc}")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _KEYS.value:
    print_keys()
    return
  from flax import nnx

  from mcjax import config as mcconfig
  from mcjax.model import build_model, costs
  from mcjax.contract import schema

  cfg = _CONFIG.value
  mcconfig.validate(cfg)
  model = build_model(cfg.model, rngs=nnx.Rngs(0))
  sv, lv = int(cfg.moment.sv_hist_len), int(cfg.moment.lv_hist_len)
  batch = schema.dummy_batch(_BATCH.value, sv, lv)
  batch = {k: v for k, v in batch.items() if not k.startswith("oracle_") and k != "in_highlight"}
  counts = costs.param_count(model)
  rows = [[name, f"{r:,} x {d}", f"{r * d:,}"] for name, (r, d) in model.table_sizes.items()]
  rows += [["dense (all layers)", "", f"{counts['dense']:,}"],
           ["total", "", f"{counts['total']:,}"]]
  print(f"config {cfg.name}: histories sv={sv} lv={lv}, gsu {cfg.model.gsu.mode} "
        f"top_k={cfg.model.gsu.top_k}, towers {cfg.model.towers.kind}")
  print(tabulate(rows, ["parameters", "shape", "count"], tablefmt="github"))
  fwd = costs.flops_per_example(model, batch)
  both = costs.flops_per_example(model, batch, backward=True)
  print(tabulate([["forward", f"{fwd:,.0f}"], ["forward + backward", f"{both:,.0f}"]],
                 ["FLOPs per example", ""], tablefmt="github"))


if __name__ == "__main__":
  launch.run(main)
