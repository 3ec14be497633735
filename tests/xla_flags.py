"""XLA flags of the tests (no imports: conftest.py sets them before jax starts).

What the tests mostly wait for is XLA compiling small programs for the CPU, not running them:
XLA's cheap CPU code generation (no LLVM optimisation, no fusion emitters) compiles the tiny
model's train step about 7x faster. The HLO passes, the SPMD partitioning and the collectives
are the same; only the generated machine code is less optimised.
"""

FAST_COMPILE = ("--xla_backend_optimization_level=0",
                "--xla_llvm_disable_expensive_passes=true",
                "--xla_cpu_use_fusion_emitters=false")


def with_fast_compile(flags: str = "") -> str:
  """``flags`` (an XLA_FLAGS value) plus each FAST_COMPILE flag it does not set itself."""
  given = {f.split("=")[0] for f in flags.split()}
  return " ".join([*flags.split(), *(f for f in FAST_COMPILE if f.split("=")[0] not in given)])
