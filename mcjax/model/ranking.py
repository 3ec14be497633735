"""Ranking score: fuses the per-task probabilities of a candidate into one number.

``product``: prod_t p_t ** w_t (computed as exp(sum w_t log p_t), p clipped at 1e-7);
``weighted_sum``: sum_t w_t p_t. Weights per task come from ``model.ranking.weights``.

Default (``model.config.default``): ``product`` with w = ctr 1.0, lvtr 0.5, ltr 0.1, cmtr 0.1,
gtr 0.2, wtr 0.1, i.e. Ranking_Score = p_ctr * p_lvtr^0.5 * p_ltr^0.1 * p_cmtr^0.1 *
p_gtr^0.2 * p_wtr^0.1: the click probability ranks first-order, a long view counts half, and the
interactions (like, comment, gift, follow) tilt the order among similar click rates. An exponent
of 0 drops a task; a task's weight scales its log-probability, so the fusion is invariant to
the overall scale of the probabilities of any one task only up to that exponent. The scorer
(``mcjax.serve``) returns this score beside the per-task probabilities.
"""

from __future__ import annotations

import jax.numpy as jnp

from mcjax.contract import schema


def task_weights(cfg):
  """[len(TASKS)] weights from the model config or its ``ranking`` section."""
  r = cfg.ranking if "ranking" in cfg else cfg
  return jnp.asarray([float(r.weights[t]) for t in schema.TASKS], jnp.float32)


def ranking_score(probs, cfg):
  """probs [B, len(TASKS)] in TASKS order -> [B] fused score."""
  r = cfg.ranking if "ranking" in cfg else cfg
  if probs.shape[-1] != len(schema.TASKS):
    raise ValueError(f"probs must have {len(schema.TASKS)} tasks {schema.TASKS}, "
                     f"got shape {probs.shape}")
  w = task_weights(r)
  probs = jnp.asarray(probs, jnp.float32)
  if r.fusion == "product":
    return jnp.exp(jnp.sum(w * jnp.log(jnp.clip(probs, 1e-7, 1.0)), axis=-1))
  if r.fusion == "weighted_sum":
    return jnp.sum(w * probs, axis=-1)
  raise ValueError(f"model.ranking.fusion must be product or weighted_sum, got {r.fusion!r}")
