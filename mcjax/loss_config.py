"""The loss section of the experiment config (``config.loss``): its keys, defaults and checks.

Apart from ``mcjax.losses`` (which imports JAX) so that loading a config needs no JAX.
"""

from __future__ import annotations

import math

import ml_collections

from mcjax.contract.schema import TASKS


def loss_config() -> ml_collections.ConfigDict:
  """Default loss settings.

  Keys:
    task_weights: per task in TASKS, the weight of its BCE (and slow-correction) pairs in
      the total; 0 switches a task off.
    contrastive_weight: weight of the sv/lv interest InfoNCE term; 0 switches it off (the
      "no contrastive loss" ablation).
    contrastive_temperature: InfoNCE temperature on cosine similarities.
    contrastive_author_weight: weight of the author_sv/author_lv InfoNCE term (needs the
      model to return ``author_sv`` and ``author_lv``); 0 switches it off.
    contrastive_mask_same_group: if True, other rows of the same user (same author for the
      author term) are not used as negatives: a time-ordered batch holds several samples of
      one user, whose interests are not negatives of each other.
    slow_logit_clip: the SLOW correction pushes a logit up only while it is below this
      value (see :func:`slow_correction`).
    contrastive_block: 0: every row of the batch is a negative of every other (in-batch);
      n > 0: negatives only within blocks of n consecutive rows (the batch size must be a
      multiple of n). With n a divisor of the per-device batch every block lives on one
      device, and the loss costs B x n similarities instead of B x B, with no communication
      (on a pod the global batch's similarities grow with the chip count:
      benchmarks/RESULTS.md, "Communication at scale"); the result does not depend on the
      mesh.
  """
  cfg = ml_collections.ConfigDict()
  cfg.task_weights = ml_collections.ConfigDict({t: 1.0 for t in TASKS})
  cfg.contrastive_weight = 0.1
  cfg.contrastive_temperature = 0.1
  cfg.contrastive_author_weight = 0.0
  cfg.contrastive_mask_same_group = True
  cfg.slow_logit_clip = 3.0
  cfg.contrastive_block = 0
  return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key of a loss config."""
  tw = dict(cfg.task_weights)
  if set(tw) != set(TASKS):
    raise ValueError(f"loss.task_weights must have exactly the keys {TASKS}, got {sorted(tw)}")
  for task, w in tw.items():
    if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
      raise ValueError(f"loss.task_weights.{task} must be a finite number >= 0, got {w!r}")
  for key in ("contrastive_weight", "contrastive_author_weight"):
    v = cfg[key]
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
      raise ValueError(f"loss.{key} must be a finite number >= 0, got {v!r}")
  n = cfg.get("contrastive_block", 0)
  if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
    raise ValueError(f"loss.contrastive_block must be an int >= 0 (0: the whole batch), got {n!r}")
  t = cfg.contrastive_temperature
  if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
    raise ValueError(f"loss.contrastive_temperature must be a finite number > 0, got {t!r}")
  c = cfg.slow_logit_clip
  if not (isinstance(c, (int, float)) and math.isfinite(c)):
    raise ValueError(f"loss.slow_logit_clip must be a finite number (a bound), got {c!r}")
  if not isinstance(cfg.contrastive_mask_same_group, bool):
    raise ValueError("loss.contrastive_mask_same_group must be a bool, "
                     f"got {cfg.contrastive_mask_same_group!r}")
