"""This machine's roofline: fp32 (and bf16-input) matmul rate and memory bandwidth, one device.

    python -m benchmarks.roofline [--json_out=roofline.json] [--step_json=bench.json]

Matmul: jitted [n, n] @ [n, n] (2 n^3 FLOPs), median of timed repeats. Memory: a jitted
reduction over a large fp32 buffer (bytes read / s) and an in-place scale of a donated buffer
(bytes read + written / s). The ridge point (FLOP per byte where the two roofs meet) tells
whether a kernel of a given arithmetic intensity is compute- or memory-bound. With
``--step_json`` (the output of ``launch/bench.py``) it also places the train step: its
intensity = compiled step FLOPs / compiled step bytes accessed (XLA cost analysis).

``matmul_rate`` is also the on-the-fly peak probe of ``launch/bench.py`` on CPU.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp


def _median_seconds(fn, *args, repeats: int, inner: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + first run
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(inner):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / inner)
  return statistics.median(times)


def matmul_rate(n: int = 1024, dtype=jnp.float32, *, repeats: int = 5, inner: int = 4) -> float:
  """FLOP/s of an [n, n] @ [n, n] matmul (fp32 accumulation) on the default device."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype)
  mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  return 2 * n**3 / _median_seconds(mm, a, b, repeats=repeats, inner=inner)


def read_bandwidth(mib: int = 512, *, repeats: int = 5, inner: int = 4) -> float:
  """Bytes/s of a jitted sum over an fp32 buffer of ``mib`` MiB (read only)."""
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  return x.nbytes / _median_seconds(jax.jit(jnp.sum), x, repeats=repeats, inner=inner)


def update_bandwidth(mib: int = 512, *, repeats: int = 5, inner: int = 4) -> float:
  """Bytes/s (read + write) of an in-place ``x * 0.999`` on a donated fp32 buffer."""
  scale = jax.jit(lambda x: x * 0.999, donate_argnums=0)
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  x = jax.block_until_ready(scale(x))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(inner):
      x = scale(x)
    jax.block_until_ready(x)
    times.append((time.perf_counter() - start) / inner)
  return 2 * x.nbytes / statistics.median(times)


def measure(*, quick: bool = False) -> dict:
  """The roofline numbers of the default device (``quick``: small sizes, few repeats)."""
  reps = dict(repeats=3, inner=2) if quick else dict(repeats=5, inner=4)
  n, mib = (256, 32) if quick else (2048, 512)
  out = {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
         "matmul_n": n, "buffer_mib": mib,
         "fp32_matmul_flops": matmul_rate(n, jnp.float32, **reps),
         "bf16_matmul_flops": matmul_rate(n, jnp.bfloat16, **reps),
         "read_bytes_per_s": read_bandwidth(mib, **reps),
         "update_bytes_per_s": update_bandwidth(mib, **reps)}
  out["ridge_flop_per_byte"] = out["fp32_matmul_flops"] / out["read_bytes_per_s"]
  return out


def place_step(roof: dict, step: dict) -> dict:
  """Where a ``launch/bench.py`` step result sits under this roofline."""
  intensity = step["step_flops"] / step["step_bytes_accessed"]
  attainable = min(roof["fp32_matmul_flops"], intensity * roof["read_bytes_per_s"])
  return {"step_flop_per_byte": intensity,
          "bound": "memory" if intensity < roof["ridge_flop_per_byte"] else "compute",
          "attainable_flops": attainable,
          "achieved_flops": step["achieved_flops"],
          "achieved_share_of_attainable": step["achieved_flops"] / attainable}


def main(argv) -> None:
  del argv
  from absl import flags
  from tabulate import tabulate
  f = flags.FLAGS
  roof = measure(quick=f.quick)
  if f.step_json:
    with open(f.step_json) as fh:
      roof["step"] = place_step(roof, json.load(fh))
  print(json.dumps(roof, indent=1))
  rows = [["fp32 matmul", f"{roof['fp32_matmul_flops'] / 1e9:.1f} GFLOP/s"],
          ["bf16-input matmul", f"{roof['bf16_matmul_flops'] / 1e9:.1f} GFLOP/s"],
          ["read bandwidth", f"{roof['read_bytes_per_s'] / 1e9:.1f} GB/s"],
          ["in-place update bandwidth", f"{roof['update_bytes_per_s'] / 1e9:.1f} GB/s"],
          ["ridge point", f"{roof['ridge_flop_per_byte']:.1f} FLOP/byte"]]
  if "step" in roof:
    s = roof["step"]
    rows += [["train step intensity", f"{s['step_flop_per_byte']:.2f} FLOP/byte ({s['bound']})"],
             ["step achieved / attainable", f"{s['achieved_share_of_attainable']:.1%}"]]
  print(tabulate(rows))
  if f.json_out:
    with open(f.json_out, "w") as fh:
      json.dump(roof, fh, indent=1)


if __name__ == "__main__":
  from absl import app, flags as absl_flags
  absl_flags.DEFINE_string("json_out", None, "Write the JSON here too.")
  absl_flags.DEFINE_string("step_json", None, "A launch/bench.py JSON to place on the roofline.")
  absl_flags.DEFINE_bool("quick", False, "Small sizes, few repeats.")
  app.run(main)
