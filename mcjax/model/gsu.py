"""General Search Unit: pick the top-k items of a long history (up to 10,000) for a candidate.

Modes (``model.gsu.mode``):
  soft           inner product between the candidate's query vector and each item's content
                 vector; the highest k win.
  hard_author    items by the candidate's author, most recent first (histories are stored most
                 recent first, so recency is -position).
  hard_category  items of the candidate's category, most recent first. Raw category codes are
                 compared, so both domains must use one category code space.

Padding (positions >= the valid length) and, in hard modes, non-matching items score -inf and
never win a slot; ``valid`` marks the slots that hold a real item (fewer than k real items
leave the extra slots invalid, to be masked downstream).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def valid_positions(length, max_len: int):
  """[B, max_len] bool: position < length."""
  return jnp.arange(max_len)[None, :] < jnp.asarray(length)[:, None]


def soft_scores(query, keys):
  """query [B, D], keys [B, L, D] -> inner products [B, L]."""
  return jnp.einsum("bd,bld->bl", query, keys)


def hard_scores(match):
  """match [B, L] bool -> recency scores [B, L] (-position), -inf where not matching."""
  recency = -jnp.arange(match.shape[1], dtype=jnp.float32)
  return jnp.where(match, recency[None, :], -jnp.inf)


def select(scores, length, k: int):
  """Top-k positions of scores [B, L] among the valid ones.

  Returns (idx [B, k'], valid [B, k'], top_scores [B, k']) with k' = min(k, L); invalid slots
  have top score -inf and an arbitrary (in-range) index.
  """
  k = min(k, scores.shape[1])
  masked = jnp.where(valid_positions(length, scores.shape[1]), scores, -jnp.inf)
  top, idx = jax.lax.top_k(masked, k)
  return idx, jnp.isfinite(top), top


def take(x, idx):
  """x [B, L, ...] gathered at idx [B, k] (positions in [0, L)) -> [B, k, ...]."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1, mode="clip")


def search(mode: str, k: int, length, *, query=None, keys=None, match=None):
  """One GSU call. soft needs query and keys; hard modes need match (see module doc).

  Returns (idx, valid, bias): bias [B, k'] is the soft score of each kept item (0 in hard
  modes, and in invalid slots), added to the ESU's attention logits so the soft search's
  query and keys get a gradient.
  """
  if mode == "soft":
    scores = soft_scores(query, keys)
  elif mode in ("hard_author", "hard_category"):
    scores = hard_scores(match)
  else:
    raise ValueError(f"model.gsu.mode must be soft, hard_author or hard_category, got {mode!r}")
  idx, valid, top = select(scores, length, k)
  bias = jnp.where(valid, top, 0.0) if mode == "soft" else jnp.zeros(top.shape, jnp.float32)
  return idx, valid, bias
