"""The timing harness shared by every throughput benchmark (mcjax and the PyTorch peer).

Framework-free on purpose (no jax or torch import), so the peer script in its own venv times
its step exactly the way ``launch/bench.py`` times the jitted one, in the manner of
big_vision and MaxText: compile and warm-up steps are not counted, the clock stops only after
the device has finished (``block``), and the rate is global examples / wall time / chips.

    timing = time_steps(lambda i: step(i), block=lambda out: out.block_until_ready(),
                        warmup=3, steps=20, repeats=5)
    summary(timing, examples_per_step=1024, chips=1)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def time_steps(step: Callable[[int], Any], *, block: Callable[[Any], Any], warmup: int,
               steps: int, repeats: int) -> dict:
  """Runs ``step(i)`` ``warmup`` times untimed, then ``repeats`` timed runs of ``steps`` calls.

  ``step`` may dispatch asynchronously; ``block(last_output)`` must wait until the device is
  done (one block per timed run, as a training loop that only syncs to log would).

  Returns:
    {"ms_per_step": [per repeat], "first_call_s": seconds of the first call (compile and
    first run, blocked)}.
  """
  if steps < 1 or repeats < 1 or warmup < 0:
    raise ValueError(f"time_steps: steps={steps}, repeats={repeats} must be >= 1 and "
                     f"warmup={warmup} >= 0")
  start = time.perf_counter()
  block(step(0))
  first_call_s = time.perf_counter() - start
  i = 1
  for _ in range(warmup):
    out = step(i)
    i += 1
  if warmup:
    block(out)
  per_repeat = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      out = step(i)
      i += 1
    block(out)
    per_repeat.append(1e3 * (time.perf_counter() - start) / steps)
  return {"ms_per_step": per_repeat, "first_call_s": first_call_s}


def summary(timing: dict, *, examples_per_step: int, chips: int = 1) -> dict:
  """Median ms/step with its spread over repeats, and examples/s (global and per chip)."""
  ms = timing["ms_per_step"]
  median = statistics.median(ms)
  per_s = examples_per_step / (median / 1e3)
  return {"ms_per_step_median": median, "ms_per_step_min": min(ms),
          "ms_per_step_max": max(ms), "repeats": len(ms),
          "spread": (max(ms) - min(ms)) / median if median else 0.0,
          "examples_per_s": per_s, "examples_per_s_per_chip": per_s / chips,
          "first_call_s": timing["first_call_s"]}


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
  """Side-by-side measurement on a shared machine: calls each named ``run() -> value`` once
  per round, round-robin (A B C A B C ...), so load from other jobs hits all of them alike."""
  out = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      out[name].append(run())
  return out
