"""Dense building blocks with logical sharding names: Linear, MLP, and banks of stacked MLPs
(experts, gates and task heads evaluated in one einsum per layer)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_KERNEL_AXES = ("embed", "mlp")


def linear(d_in: int, d_out: int, *, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
  """nnx.Linear whose kernel carries the ("embed", "mlp") logical axes."""
  return nnx.Linear(d_in, d_out, use_bias=use_bias, rngs=rngs,
                    kernel_metadata={"out_sharding": _KERNEL_AXES})


class MLP(nnx.Module):
  """gelu MLP: widths (d_in, *hidden, d_out); no activation after the last layer."""

  def __init__(self, d_in: int, hidden: Sequence[int], d_out: int, *, rngs: nnx.Rngs):
    widths = (d_in, *hidden, d_out)
    self.layers = nnx.List([linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i + 1 < len(self.layers):
        x = jax.nn.gelu(x)
    return x


class MLPBank(nnx.Module):
  """n independent gelu MLPs with stacked weights: [B, n, d_in] -> [B, n, d_out]."""

  def __init__(self, n: int, d_in: int, hidden: Sequence[int], d_out: int, *,
               rngs: nnx.Rngs):
    widths = (d_in, *hidden, d_out)
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2,
                                             out_axis=-1, batch_axis=(0,))
    self.kernels = nnx.List([
        nnx.Param(init(rngs.params(), (n, a, b)), out_sharding=(None, *_KERNEL_AXES))
        for a, b in zip(widths[:-1], widths[1:])])
    self.biases = nnx.List([nnx.Param(jnp.zeros((n, b))) for b in widths[1:]])

  def __call__(self, x):
    for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
      x = jnp.einsum("bni,nio->bno", x, w[...]) + b[...]
      if i + 1 < len(self.kernels):
        x = jax.nn.gelu(x)
    return x
