"""Domain item encoders: one per domain (live, short video), separate parameters.

An item is described by *content* embeddings (id, author, category and, for short videos,
tag) and *behaviour* embeddings (action bits, watch-time or play-progress bucket, time gap to
the sample). ``content`` is one linear map of the content rows: cheap enough to score every
item of a 10,000-long history in the soft GSU; the candidate live goes through the live
encoder's ``content`` too, so it lives in the same space as the live history. ``item`` (only
for the top-k the GSU keeps) adds behaviour: ``content + MLP([content, behaviour])``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mcjax.model import layers

# feature-name suffixes (see embedding.feature_plan) of each domain's item description
DOMAIN_CONTENT = {"lv": ("item", "author", "category"),
                  "sv": ("item", "author", "category", "tag")}
DOMAIN_BEHAVIOUR = {"lv": ("action", "watch", "gap"), "sv": ("action", "progress", "gap")}


class DomainEncoder(nnx.Module):
  """Item encoder of one domain ("lv" or "sv"): content vectors and full item vectors."""

  def __init__(self, domain: str, dim: int, d_model: int, *, rngs: nnx.Rngs):
    if domain not in DOMAIN_CONTENT:
      raise ValueError(f"domain must be one of {tuple(DOMAIN_CONTENT)}, got {domain!r}")
    self.domain = domain
    n_content, n_behaviour = len(DOMAIN_CONTENT[domain]), len(DOMAIN_BEHAVIOUR[domain])
    self.content_proj = layers.linear(n_content * dim, d_model, rngs=rngs)
    self.item_mlp = layers.MLP(d_model + n_behaviour * dim, (2 * d_model,), d_model, rngs=rngs)

  def content(self, rows: dict, prefix: str | None = None):
    """[..., d_model] from rows[f"{prefix}_{suffix}"] (prefix defaults to the domain)."""
    prefix = prefix or self.domain
    x = jnp.concatenate([rows[f"{prefix}_{s}"] for s in DOMAIN_CONTENT[self.domain]], -1)
    return self.content_proj(x)

  def item(self, content, behaviour):
    """content [..., d_model] and behaviour rows [..., n_behaviour * dim] -> [..., d_model]."""
    return content + self.item_mlp(jnp.concatenate([content, behaviour], -1))

  def behaviour(self, rows: dict):
    """The domain's behaviour rows concatenated: [B, L, n_behaviour * dim]."""
    return jnp.concatenate([rows[f"{self.domain}_{s}"] for s in DOMAIN_BEHAVIOUR[self.domain]],
                           -1)
