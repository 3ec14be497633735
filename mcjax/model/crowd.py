"""Moment features encoder: the live's real-time crowd counts and rates -> a vector."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from mcjax.model import features, layers
from mcjax.contract import schema


class CrowdEncoder(nnx.Module):
  """log1p(CROWD_FEATURES) [B, n] (float32, then the compute dtype) -> gelu MLP ->
  [B, d_model]. ``drop``: names of CROWD_FEATURES the encoder leaves out (the samples still
  carry them)."""

  def __init__(self, hidden: Sequence[int], d_model: int, *, rngs: nnx.Rngs, dtype=None,
               drop: Sequence[str] = ()):
    self.keep = tuple(i for i, n in enumerate(schema.CROWD_FEATURES) if n not in set(drop))
    self.mlp = layers.MLP(len(self.keep), tuple(hidden), d_model, rngs=rngs, dtype=dtype)
    self.width = d_model  # of the output

  def scaled(self, crowd):
    """The encoder's input: log1p of the kept features, [B, len(keep)]."""
    if len(self.keep) < len(schema.CROWD_FEATURES):
      crowd = crowd[..., jnp.asarray(self.keep)]
    return features.scale_crowd(crowd)

  def __call__(self, crowd):
    return self.mlp(self.scaled(crowd))
