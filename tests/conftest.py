"""Shared test set-up: CPU only, 8 fake host devices for mesh tests, XLA's cheap CPU code
generation (``xla_flags.FAST_COMPILE``), absl flags parsed."""

import os

from xla_flags import with_fast_compile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ["XLA_FLAGS"] = with_fast_compile(flags)

from absl import flags as absl_flags  # noqa: E402

# Grain workers and library code read absl flags; pytest never parses them.
absl_flags.FLAGS.mark_as_parsed()
