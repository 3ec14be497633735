"""Training losses: masked multi-task BCE, the fast/slow correction and the InfoNCE alignment.

``compute_loss(out, batch, cfg)`` is the one entry point used by the train and eval steps. It
dispatches per sample by ``batch["kind"]`` through masks (never Python branches on data):

* REALTIME, CLOSE, FAST and EVAL samples train every (sample, task) pair whose
  ``label_mask`` is 1 with binary cross-entropy. Real-time samples carry first-only masks;
  CLOSE and FAST samples carry all-ones masks, so the same code is plain BCE for them.
* SLOW samples carry only the labels that turned positive after the FAST sample was emitted
  (label 1, mask 1) and train the bounded correction term of :func:`slow_correction`.
* The contrastive terms align the short-video and live interest vectors of the model
  (:func:`info_nce`) over the rows where both histories are non-empty
  (:func:`both_histories`), and optionally the author-level ones.

Normalisation: the BCE and slow-correction sums share one denominator, the weighted number
of trained pairs in the batch (BCE pairs + SLOW pairs), so a correction cancels the negative
it corrects at the same scale; with no SLOW samples ``loss/bce`` is the mean BCE over trained
pairs. ``batch["weight"]`` (0 for padding rows, missing = all ones) weights every term. A
batch (or a task) without trained pairs gives 0 and finite gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mcjax.contract.schema import SLOW, TASKS
from mcjax.loss_config import loss_config, validate  # noqa: F401  (the config section)

# Logit given to excluded pairs in InfoNCE: finite (no NaN in an all-padding batch) and far
# below any cosine similarity / temperature.
_EXCLUDED_LOGIT = -1e9


def bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Elementwise, numerically stable binary cross-entropy on logits."""
  return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


def slow_correction(logits: jax.Array, clip: float) -> jax.Array:
  """Elementwise correction for a label that turned positive after its FAST sample.

  The FAST sample already trained this pair as a negative, with loss
  ``-log(1 - sigmoid(z))``. The SLOW sample must leave the pair trained as a positive, so it
  adds the positive term and removes the negative one:

      -log sigmoid(z) + log(1 - sigmoid(z)) = -log(sigmoid(z) / sigmoid(-z)) = -z,

  since ``sigmoid(z) / (1 - sigmoid(z)) = exp(z)``. Its gradient is -1 for every z: unlike
  BCE it never fades, so the term alone drives z to +infinity. It is bounded by using
  ``-min(z, clip)``: the pair is pushed up only while its logit is below ``clip`` (gradient
  -1), and not at all above it (gradient 0). The value is >= -clip (it may be negative:
  the correction removes loss the FAST sample added).
  """
  return -jnp.minimum(logits, clip)


def _l2_normalize(x: jax.Array) -> jax.Array:
  # rsqrt of a floored squared norm: a zero (padding) row stays finite, with finite gradient.
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def info_nce(a: jax.Array, b: jax.Array, weight: jax.Array, temperature: float,
             group: jax.Array | None = None, block: int = 0) -> jax.Array:
  """Symmetric in-batch InfoNCE between rows of ``a`` [B, D] and ``b`` [B, D].

  Row i of ``a`` and row i of ``b`` are a positive pair; every other valid row is a negative
  (with ``block`` n > 0: every other valid row of its block of n consecutive rows; B must be
  a multiple of n). Vectors are L2-normalised, similarities divided by ``temperature``. Rows
  with ``weight == 0`` (padding) are neither anchors, positives nor negatives; anchors are
  averaged with their weights. If ``group`` [B] is given, other rows of the same group (the
  same user) are not negatives. Returns ``(loss_a->b + loss_b->a) / 2``; 0 if no row is valid.
  """
  a = _l2_normalize(a.astype(jnp.float32))
  b = _l2_normalize(b.astype(jnp.float32))
  valid = weight > 0
  if block and block < a.shape[0]:
    if a.shape[0] % block:
      raise ValueError(f"loss.contrastive_block={block} does not divide the batch of "
                       f"{a.shape[0]} rows")
    split = lambda x: x.reshape((-1, block) + x.shape[1:])  # noqa: E731
    rows = jax.vmap(_info_nce_rows, in_axes=(0, 0, 0, None, 0 if group is not None else None))
    per_row = rows(split(a), split(b), split(valid), temperature,
                   None if group is None else split(group)).reshape(-1)
  else:
    per_row = _info_nce_rows(a, b, valid, temperature, group)
  w = jnp.where(valid, weight, 0.0).astype(jnp.float32)
  return jnp.sum(w * per_row) / jnp.maximum(jnp.sum(w), 1e-12)


def _info_nce_rows(a: jax.Array, b: jax.Array, valid: jax.Array, temperature: float,
                   group: jax.Array | None) -> jax.Array:
  """``info_nce``'s per-row loss over one set of rows (normalised ``a``, ``b`` [n, D]); 0 for
  rows that are not ``valid``."""
  sim = (a @ b.T) / temperature  # [n, n]: rows are a anchors, columns b candidates
  keep = valid[:, None] & valid[None, :]
  if group is not None:
    eye = jnp.arange(sim.shape[0])[:, None] == jnp.arange(sim.shape[1])[None, :]
    keep = keep & ((group[:, None] != group[None, :]) | eye)
  sim = jnp.where(keep, sim, _EXCLUDED_LOGIT)
  # The positives as row-wise dot products, not jnp.diagonal(sim): on a mesh the diagonal's
  # backward is a scatter-add into the [B/data, B] similarity matrix, all-reduced over the
  # devices of a model group (benchmarks/RESULTS.md, "Communication at scale").
  diag = jnp.where(valid, jnp.sum(a * b, axis=-1) / temperature, _EXCLUDED_LOGIT)
  loss_ab = jax.nn.logsumexp(sim, axis=1) - diag
  loss_ba = jax.nn.logsumexp(sim, axis=0) - diag
  return jnp.where(valid, 0.5 * (loss_ab + loss_ba), 0.0)


def both_histories(batch: dict) -> jax.Array:
  """1.0 for rows whose short-video and live histories are both non-empty, else 0.0 ([B]).

  The interest InfoNCE aligns a user's two domains; a row with an empty history has only the
  ESU's null vector on that side, and aligning it would pull the other domain's interest
  toward a constant (hurting exactly the live-sparse users Cross is for). Batches without
  ``sv_len`` / ``lv_len`` count as having both.
  """
  ones = jnp.ones(jnp.shape(batch["labels"])[:1], jnp.float32)
  for key in ("sv_len", "lv_len"):
    if key in batch:
      ones = ones * (jnp.asarray(batch[key]) > 0).astype(jnp.float32)
  return ones


def _interest_pair(out: dict, key_a: str, key_b: str, term: str):
  missing = [k for k in (key_a, key_b) if k not in out]
  if missing:
    raise ValueError(f"loss.{term} > 0 needs the model output(s) {missing}; "
                     f"the model returned {sorted(out)}")
  return out[key_a], out[key_b]


def compute_loss(out: dict, batch: dict, cfg: ml_collections.ConfigDict):
  """Total training loss and its named terms.

  Args:
    out: model outputs: ``logits`` [B, len(TASKS)], ``sv_interest`` / ``lv_interest`` [B, D]
      (needed when ``cfg.contrastive_weight > 0``), ``author_sv`` / ``author_lv`` [B, D]
      (needed when ``cfg.contrastive_author_weight > 0``).
    batch: ``labels`` [B, T], ``label_mask`` [B, T], ``kind`` [B], optional ``weight`` [B]
      (missing = ones), optional ``sv_len`` / ``lv_len`` [B] (the interest InfoNCE uses only
      rows where both are > 0), ``user_id`` / ``author_id`` [B] (group ids for the contrastive
      masking when ``cfg.contrastive_mask_same_group``).
    cfg: from :func:`loss_config`.

  Returns:
    ``(total, terms)``: ``total`` a scalar to differentiate; ``terms`` a flat dict of scalars:
    ``loss/bce_<task>`` (mean BCE over the task's trained pairs, unweighted by task weight),
    ``loss/bce``, ``loss/slow_correction``, ``loss/contrastive``,
    ``loss/contrastive_author``, ``loss/total`` (= bce + slow_correction
    + contrastive_weight * contrastive + contrastive_author_weight * contrastive_author),
    and the pair counts ``loss/n_bce_pairs``, ``loss/n_slow_pairs`` (weighted).
  """
  logits = out["logits"].astype(jnp.float32)
  labels = batch["labels"].astype(jnp.float32)
  mask = batch["label_mask"].astype(jnp.float32)
  if logits.shape != labels.shape or labels.shape != mask.shape:
    raise ValueError(f"logits {logits.shape}, labels {labels.shape} and label_mask "
                     f"{mask.shape} must have the same shape [B, {len(TASKS)}]")
  weight = batch.get("weight")
  weight = (jnp.ones(logits.shape[:1], jnp.float32) if weight is None
            else weight.astype(jnp.float32))
  task_w = jnp.asarray([float(cfg.task_weights[t]) for t in TASKS], jnp.float32)

  is_slow = (batch["kind"] == SLOW)[:, None]
  bce_w = jnp.where(is_slow, 0.0, mask) * weight[:, None]               # [B, T]
  slow_w = jnp.where(is_slow, mask * labels, 0.0) * weight[:, None]     # late positives only
  # Zero-weight pairs must give exactly zero gradient: select, do not multiply, so that an
  # inf/NaN in a masked pair cannot leak (0 * inf = NaN).
  bce_el = jnp.where(bce_w > 0, bce(logits, labels), 0.0)
  slow_el = jnp.where(slow_w > 0, slow_correction(logits, cfg.slow_logit_clip), 0.0)

  n_bce_task = jnp.sum(bce_w, axis=0)                                   # [T]
  bce_task = jnp.sum(bce_w * bce_el, axis=0) / jnp.maximum(n_bce_task, 1e-12)
  n_bce, n_slow = jnp.sum(bce_w), jnp.sum(slow_w)
  denom = jnp.maximum(n_bce + n_slow, 1e-12)
  bce_total = jnp.sum(task_w * jnp.sum(bce_w * bce_el, axis=0)) / denom
  slow_total = jnp.sum(task_w * jnp.sum(slow_w * slow_el, axis=0)) / denom

  zero = jnp.zeros((), jnp.float32)
  group = {"user": None, "author": None}
  if cfg.contrastive_mask_same_group:
    group = {"user": batch.get("user_id"), "author": batch.get("author_id")}
  contrastive = contrastive_author = zero
  block = cfg.get("contrastive_block", 0)
  if cfg.contrastive_weight > 0:
    a, b = _interest_pair(out, "sv_interest", "lv_interest", "contrastive_weight")
    contrastive = info_nce(a, b, weight * both_histories(batch), cfg.contrastive_temperature,
                           group["user"], block)
  if cfg.contrastive_author_weight > 0:
    a, b = _interest_pair(out, "author_sv", "author_lv", "contrastive_author_weight")
    contrastive_author = info_nce(a, b, weight, cfg.contrastive_temperature, group["author"],
                                  block)

  total = (bce_total + slow_total + cfg.contrastive_weight * contrastive
           + cfg.contrastive_author_weight * contrastive_author)
  terms = {f"loss/bce_{t}": bce_task[i] for i, t in enumerate(TASKS)}
  terms.update({
      "loss/bce": bce_total,
      "loss/slow_correction": slow_total,
      "loss/contrastive": contrastive,
      "loss/contrastive_author": contrastive_author,
      "loss/total": total,
      "loss/n_bce_pairs": n_bce,
      "loss/n_slow_pairs": n_slow,
  })
  return total, terms
