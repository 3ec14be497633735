"""Hard-search match statistics of the histories against the candidate live.

For each history branch that is on: how many valid items share the candidate's author, how
many share its category, the position of the most recent same-author item (the history is
most recent first; the length when there is none) and the valid length itself, all
``log1p``-scaled. They are the counts a hard-search GSU (SIM) selects on, given to the towers
directly: exact identity matches that a soft inner-product search must otherwise learn, and
the strongest short-video signal of a user's affinity for a live author. Pure jnp on the raw
ids of the batch (equal ids stay equal when JAX wraps int64 to int32).
"""

from __future__ import annotations

import jax.numpy as jnp

PER_DOMAIN = ("same_author", "same_category", "author_recency", "length")


def num_features(domains) -> int:
  return len(PER_DOMAIN) * len(tuple(domains))


def match_features(batch: dict, domains) -> jnp.ndarray:
  """[B, num_features(domains)] float32 for domains in ("lv", "sv")."""
  author = jnp.asarray(batch["author_id"])[:, None]
  category = jnp.asarray(batch["live_category"])[:, None]
  cols = []
  for dom in domains:
    items = jnp.asarray(batch[f"{dom}_author"])
    width = items.shape[1]
    length = jnp.minimum(jnp.asarray(batch[f"{dom}_len"]), width)
    valid = jnp.arange(width)[None, :] < length[:, None]
    same_author = valid & (items == author)
    same_cat = valid & (jnp.asarray(batch[f"{dom}_category"]) == category)
    first = jnp.min(jnp.where(same_author, jnp.arange(width)[None, :], width), axis=1)
    first = jnp.where(jnp.any(same_author, axis=1), first, length)
    cols += [same_author.sum(1), same_cat.sum(1), first, length]
  return jnp.log1p(jnp.stack(cols, axis=-1).astype(jnp.float32))
