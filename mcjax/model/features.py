"""Integer feature transforms of the padded batch: time-gap, progress and watch-time buckets,
and the log1p scaling of the real-time crowd features. Pure jnp, any batch shape.

Timestamps: with ``jax_enable_x64`` off (the default), JAX wraps int64 epoch milliseconds to
int32 on transfer; the difference of two wrapped values is still exact for gaps under
2**31 ms (24.8 days). A wrapped (negative) gap lands in the last (oldest) bucket, so gaps up to
49.7 days bucket correctly; older items are only right with x64 on.
"""

from __future__ import annotations

import jax.numpy as jnp


def _log2_bucket(x, n_buckets: int):
  x = jnp.maximum(x.astype(jnp.float32), 0.0)
  return jnp.clip(jnp.floor(jnp.log2(1.0 + x)), 0, n_buckets - 1).astype(jnp.int32)


def time_gap_bucket(query_ts_ms, item_ts_ms, n_buckets: int):
  """floor(log2(1 + gap seconds)) of history items [B, L] before the query time [B]."""
  gap_ms = query_ts_ms[:, None] - item_ts_ms  # wraps consistently under int32
  bucket = _log2_bucket(gap_ms // 1000, n_buckets)
  return jnp.where(gap_ms < 0, n_buckets - 1, bucket)


def progress_bucket(progress, n_buckets: int):
  """floor(10 * play progress), clipped to [0, n_buckets - 1]."""
  return jnp.clip(jnp.floor(10.0 * progress), 0, n_buckets - 1).astype(jnp.int32)


def watch_bucket(watch_s, n_buckets: int):
  """floor(log2(1 + seconds watched)), clipped to [0, n_buckets - 1]."""
  return _log2_bucket(watch_s, n_buckets)


def scale_crowd(crowd):
  """log1p of the (non-negative) crowd counts and rates, [B, len(CROWD_FEATURES)]."""
  return jnp.log1p(jnp.maximum(crowd.astype(jnp.float32), 0.0))
