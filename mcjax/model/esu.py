"""Exact Search Unit: multi-head target attention of a candidate over a few history items.

Padded slots (mask False) get zero weight exactly, so their contents never change the output;
when no slot is valid the output is a learned null vector (never NaN).

With one query per example, the key and value projections are folded into the query side
(associativity): logits = items . (W_k q) per head, and the attended value = W_v (weights .
items). No per-item key or value vector is formed: the same function as projecting every item
(up to float rounding), at a fraction of the work and memory.

With a compute ``dtype`` (bfloat16) the projections and the attention's matmuls run in it;
the logits are scaled, biased, masked and softmaxed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mcjax.model import layers


class TargetAttention(nnx.Module):
  """query [B, D] attends over items [B, K, D] (mask [B, K]) -> [B, D]."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    if d_model % num_heads:
      raise ValueError(f"model.esu.num_heads={num_heads} must divide d_model={d_model}")
    self.num_heads, self.dtype = num_heads, dtype
    self.q = layers.linear(d_model, d_model, rngs=rngs, use_bias=False, dtype=dtype)
    self.k = layers.linear(d_model, d_model, rngs=rngs, use_bias=False, dtype=dtype)
    self.v = layers.linear(d_model, d_model, rngs=rngs, use_bias=False, dtype=dtype)
    self.out = layers.linear(d_model, d_model, rngs=rngs, dtype=dtype)
    self.null = nnx.Param(jnp.zeros((d_model,)))
    self.width = d_model  # of the output

  def __call__(self, query, items, mask, bias=None):
    b, n, d = items.shape
    h, dtype = self.num_heads, self.dtype
    items = layers.cast(items, dtype)
    q = self.q(query).reshape(b, h, d // h)
    # logits[b, h, n] = sum_e q[b, h, e] k[b, n, h, e] with k = items @ W_k
    qk = jnp.einsum("bhe,che->bhc", q,
                    layers.cast(self.k.kernel[...], dtype).reshape(d, h, d // h))
    logits = jnp.einsum("bhc,bnc->bhn", qk, items)
    if dtype is not None:
      logits = logits.astype(jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(d // h))
    if bias is not None:
      logits = logits + bias[:, None, :] / jnp.sqrt(jnp.float32(d))
    logits = jnp.where(mask[:, None, :], logits, -1e30)
    weights = layers.cast(jax.nn.softmax(logits, axis=-1) * mask[:, None, :], dtype)
    # attended[b, h, e] = sum_n weights[b, h, n] v[b, n, h, e] with v = items @ W_v
    pooled = jnp.einsum("bhn,bnc->bhc", weights, items)
    attended = jnp.einsum("bhc,che->bhe", pooled,
                          layers.cast(self.v.kernel[...], dtype).reshape(d, h, d // h))
    return jnp.where(mask.any(-1, keepdims=True), self.out(attended.reshape(b, d)),
                     layers.cast(self.null[...], dtype))
