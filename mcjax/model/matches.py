"""Hard-search match statistics of the histories against the candidate live.

For each history branch that is on: how many valid items share the candidate's author, how
many share its category, the position of the most recent same-author item (the history is
most recent first; the length when there is none) and the valid length itself, all
``log1p``-scaled. They are the counts a hard-search GSU (SIM) selects on, given to the towers
directly: exact identity matches that a soft inner-product search must otherwise learn, and
the strongest short-video signal of a user's affinity for a live author. Pure jnp on the raw
ids of the batch (equal ids stay equal when JAX wraps int64 to int32).

``model.match_set = "affinity"`` adds, per domain, the user x author interaction features
(``AFFINITY``): the same-author and same-category counts as shares of the valid history
(rates, not counts), the same-author items in the last hour and day before the query time,
the same-author items the user liked and followed (action bits as of the query time), and
the engagement with the author (short video: summed play progress; live: clicked rooms and
``log1p`` watch seconds). Every one reads fields of the history snapshot taken at the query
time, so they see what a serving request sees. ``"affinity_user"`` adds, per domain, the
user's own rates over the valid history, whoever the author (``USER_RATES``): the share of
items liked, followed and (live) clicked, and the mean engagement (play progress; log1p watch
seconds): a user's overall propensity, read from behaviour instead of learned in the user's
embedding row from the few samples one user has. ``"affinity_log"`` adds instead, per domain,
the log shares (``LOG_SHARES``): the candidate's category's and author's shares of the
history on a log scale with pseudo-counts, and the category's log share of the engaged items
(clicked lives, liked videos) over its share of all items. A user who picks categories by a
softmax of interest plays each in proportion to exp(interest): its log share is linear in the
interest, the scale the click logit carries it at.
"""

from __future__ import annotations

import jax.numpy as jnp

from mcjax.contract import schema
from mcjax.model.config import MATCH_SETS

PER_DOMAIN = ("same_author", "same_category", "author_recency", "length")
AFFINITY = ("author_share", "category_share", "author_1h", "author_1d", "author_liked",
            "author_followed", "author_engaged", "author_clicked")
USER_RATES = ("liked_share", "followed_share", "clicked_share", "mean_engaged")
LOG_SHARES = ("category_log_share", "author_log_share", "category_engaged_log_ratio")
# Pseudo-counts of the log shares: CATEGORY_PRIOR items spread over the categories (a new user
# starts at log(1/16)), AUTHOR_PRIOR items of the author in AUTHOR_PRIOR_TOTAL.
CATEGORY_PRIOR, CATEGORY_PRIOR_PER = 8.0, 0.5
AUTHOR_PRIOR, AUTHOR_PRIOR_TOTAL = 0.1, 1.0
HOUR_MS, DAY_MS = 3_600_000, 86_400_000


def num_features(domains, match_set: str = "counts") -> int:
  per = len(PER_DOMAIN) + (len(AFFINITY) if match_set != "counts" else 0) + (
      len(USER_RATES) if match_set == "affinity_user" else 0) + (
      len(LOG_SHARES) if match_set == "affinity_log" else 0)
  return per * len(tuple(domains))


def _item_engagement(batch: dict, dom: str):
  """[B, L] float32 engagement with each history item: play progress (short video), log1p
  watch seconds (live)."""
  if dom == "sv":
    return jnp.asarray(batch["sv_progress"], jnp.float32)
  return jnp.log1p(jnp.maximum(jnp.asarray(batch["lv_watch_s"], jnp.float32), 0.0))


def _user_rates(batch: dict, dom: str, valid, length) -> list:
  """The ``USER_RATES`` columns of one domain, each [B] float32."""
  f32 = jnp.float32
  n = jnp.maximum(length, 1).astype(f32)
  action = jnp.asarray(batch[f"{dom}_action"])
  bits = schema.ACTION_BITS[dom]

  def share(bit):
    return (valid & ((action & bit) != 0)).sum(1).astype(f32) / n

  clicked = share(bits["click"]) if dom == "lv" else jnp.zeros(valid.shape[:1], f32)
  return [share(bits["like"]), share(bits["follow"]), clicked,
          jnp.where(valid, _item_engagement(batch, dom), 0.0).sum(1) / n]


def _affinity(batch: dict, dom: str, same_author, same_cat, length) -> list:
  """The ``AFFINITY`` columns of one domain, each [B] float32, already scaled."""
  f32 = jnp.float32
  n = jnp.maximum(length, 1).astype(f32)
  gap = (jnp.asarray(batch["query_ts_ms"])[:, None]
         - jnp.asarray(batch[f"{dom}_ts_ms"]))  # int32-wrapped times: the gap is exact
  action = jnp.asarray(batch[f"{dom}_action"])
  bits = schema.ACTION_BITS[dom]

  def count(mask):
    return jnp.log1p((same_author & mask).sum(1).astype(f32))

  engaged = jnp.log1p(jnp.where(same_author, _item_engagement(batch, dom), 0.0).sum(1))
  clicked = (count((action & bits["click"]) != 0) if dom == "lv"
             else jnp.zeros(same_author.shape[:1], f32))  # a play is its own click
  return [same_author.sum(1).astype(f32) / n, same_cat.sum(1).astype(f32) / n,
          count((gap >= 0) & (gap < HOUR_MS)), count((gap >= 0) & (gap < DAY_MS)),
          count((action & bits["like"]) != 0), count((action & bits["follow"]) != 0),
          engaged, clicked]


def _log_shares(batch: dict, dom: str, valid, same_author, same_cat, length) -> list:
  """The ``LOG_SHARES`` columns of one domain, each [B] float32: the candidate's category's
  and author's log shares of the valid history (with pseudo-counts), and the category's log
  share of the engaged items (live: clicked, short video: liked) over its share of all items.
  The log share is what a softmax choice over categories makes linear in the user's interest."""
  f32 = jnp.float32
  n = length.astype(f32)
  cat = same_cat.sum(1).astype(f32)
  action = jnp.asarray(batch[f"{dom}_action"])
  bit = schema.ACTION_BITS[dom]["click" if dom == "lv" else "like"]
  engaged = valid & ((action & bit) != 0)
  cat_share = jnp.log((cat + CATEGORY_PRIOR_PER) / (n + CATEGORY_PRIOR))
  eng_share = jnp.log(((engaged & same_cat).sum(1).astype(f32) + CATEGORY_PRIOR_PER)
                      / (engaged.sum(1).astype(f32) + CATEGORY_PRIOR))
  return [cat_share,
          jnp.log((same_author.sum(1).astype(f32) + AUTHOR_PRIOR) / (n + AUTHOR_PRIOR_TOTAL)),
          eng_share - cat_share]


def match_features(batch: dict, domains, match_set: str = "counts") -> jnp.ndarray:
  """[B, num_features(domains, match_set)] float32 for domains in ("lv", "sv")."""
  if match_set not in MATCH_SETS:
    raise ValueError(f"model.match_set={match_set!r}: expected one of {MATCH_SETS}")
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
    cols += [jnp.log1p(c.astype(jnp.float32))
             for c in (same_author.sum(1), same_cat.sum(1), first, length)]
    if match_set != "counts":
      cols += _affinity(batch, dom, same_author, same_cat, length)
    if match_set == "affinity_user":
      cols += _user_rates(batch, dom, valid, length)
    if match_set == "affinity_log":
      cols += _log_shares(batch, dom, valid, same_author, same_cat, length)
  return jnp.stack(cols, axis=-1)
