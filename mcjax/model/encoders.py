"""Domain item encoders: one per domain (live, short video), separate parameters.

An item is described by *content* embeddings (id, author, category and, for short videos,
tag) and *behaviour* embeddings (action bits, watch-time or play-progress bucket, time gap to
the sample). ``content`` is one linear map of the content rows: cheap enough to score every
item of a 10,000-long history in the soft GSU; the candidate live goes through the live
encoder's ``content`` too, so it lives in the same space as the live history. ``item`` (only
for the top-k the GSU keeps, and the recent-N) adds behaviour:
``content + MLP([content, behaviour])``.

Both maps take their inputs as parts: the concatenations [item, author, category(, tag)]
and [content, behaviour] are never materialised. The id and author rows come gathered; the
side-table features (category and tag, and all behaviour features) come as the domain's
small side table and row ids, and their share of the linear map is folded into the table
(``layers.take_matmul``). With a compute ``dtype`` the rows come cast already; the kernels
and the side table are cast here, so the maps run in the compute dtype.
"""

from __future__ import annotations

from flax import nnx

from mcjax.model import layers

# feature-name suffixes (see embedding.feature_plan) of each domain's item description
DOMAIN_CONTENT = {"lv": ("item", "author", "category"),
                  "sv": ("item", "author", "category", "tag")}
DOMAIN_BEHAVIOUR = {"lv": ("action", "watch", "gap"), "sv": ("action", "progress", "gap")}
# the trailing content features, read from the domain's side table
SIDE_CONTENT = {"lv": ("category",), "sv": ("category", "tag")}
assert all(DOMAIN_CONTENT[d][-len(s):] == s for d, s in SIDE_CONTENT.items())


class DomainEncoder(nnx.Module):
  """Item encoder of one domain ("lv" or "sv"): content vectors and full item vectors."""

  def __init__(self, domain: str, dim: int, d_model: int, *, rngs: nnx.Rngs, dtype=None):
    if domain not in DOMAIN_CONTENT:
      raise ValueError(f"domain must be one of {tuple(DOMAIN_CONTENT)}, got {domain!r}")
    self.domain, self.dtype = domain, dtype
    n_content, n_behaviour = len(DOMAIN_CONTENT[domain]), len(DOMAIN_BEHAVIOUR[domain])
    self.content_proj = layers.linear(n_content * dim, d_model, rngs=rngs, dtype=dtype)
    self.item_mlp = layers.MLP(d_model + n_behaviour * dim, (2 * d_model,), d_model, rngs=rngs,
                               dtype=dtype)
    self.width = d_model  # of ``content`` and ``item``

  def content(self, rows: dict, table, side_ids, prefix: str | None = None):
    """[..., d_model] from rows[f"{prefix}_{suffix}"] [..., dim] of the leading content
    features (prefix defaults to the domain) and the ``SIDE_CONTENT`` features' row ids
    [..., n_side] into ``table``."""
    prefix, dtype = prefix or self.domain, self.dtype
    names = DOMAIN_CONTENT[self.domain][:-len(SIDE_CONTENT[self.domain])]
    kernel, dim = layers.cast(self.content_proj.kernel[...], dtype), table.shape[-1]
    out = sum(layers.cast(rows[f"{prefix}_{s}"], dtype) @ kernel[i * dim:(i + 1) * dim]
              for i, s in enumerate(names))
    return (out + layers.take_matmul(layers.cast(table, dtype), side_ids,
                                     kernel[len(names) * dim:])
            + layers.cast(self.content_proj.bias[...], dtype))

  def item(self, content, table, behaviour_ids):
    """content [..., d_model] and the behaviour features' row ids [..., n_behaviour] (in
    ``DOMAIN_BEHAVIOUR`` order) into ``table`` -> [..., d_model]: content + MLP([content,
    table[ids[..., 0]], table[ids[..., 1]], ...])."""
    first, dtype = self.item_mlp.layers[0], self.dtype
    kernel, d = layers.cast(first.kernel[...], dtype), content.shape[-1]
    content = layers.cast(content, dtype)
    h = (content @ kernel[:d] + layers.cast(first.bias[...], dtype)
         + layers.take_matmul(layers.cast(table, dtype), behaviour_ids, kernel[d:]))
    return content + self.item_mlp.after_first(h)
