"""Moment features encoder: the live's real-time crowd counts and rates -> a vector."""

from __future__ import annotations

from typing import Sequence

from flax import nnx

from mcjax.model import features, layers
from mcjax.contract import schema


class CrowdEncoder(nnx.Module):
  """log1p(CROWD_FEATURES) [B, n] (float32, then the compute dtype) -> gelu MLP ->
  [B, d_model]."""

  def __init__(self, hidden: Sequence[int], d_model: int, *, rngs: nnx.Rngs, dtype=None):
    self.mlp = layers.MLP(len(schema.CROWD_FEATURES), tuple(hidden), d_model, rngs=rngs,
                          dtype=dtype)
    self.width = d_model  # of the output

  def __call__(self, crowd):
    return self.mlp(features.scale_crowd(crowd))
