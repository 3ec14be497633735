"""Hash-collision measurement of the embedding tables (as TorchRec / Monolith report it).

``collision_rate`` is the share of distinct ids that share their row with another distinct id.
``collision_report`` does it per table for a log folder (ids from its side tables) or for a
dict of id arrays keyed by sample field (e.g. a sample table), over all the features the model
could hash into each table (every history and alignment switch on).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from mcjax.eventlog import io as log_io
from mcjax.model import embedding as E

# Features whose values are buckets computed from other fields; not ids to report.
_DERIVED = ("lv_watch", "lv_gap", "sv_progress", "sv_gap")


def _colliding(rows: np.ndarray) -> int:
  _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
  return int((counts[inverse] > 1).sum())


def collision_rate(ids: np.ndarray, vocab: int, salt: str | int) -> float:
  """Share of the distinct ids that share a row with another distinct id."""
  distinct = np.unique(np.asarray(ids).reshape(-1))
  if distinct.size == 0:
    return 0.0
  return _colliding(E.hash_ids(distinct, salt, vocab, xp=np)) / distinct.size


def _log_fields(log_dir: str) -> dict[str, np.ndarray]:
  """Sample-field name -> the ids a log folder can produce for it."""
  def col(name, column):
    return log_io.read_side(log_dir, name).column(column).to_numpy()
  authors = log_io.read_side(log_dir, "authors.parquet")
  author_ids = authors.column("author_id").to_numpy()
  live_authors = author_ids[authors.column("is_live_author").to_numpy(zero_copy_only=False)]
  video_authors = col("videos.parquet", "author_id")
  return {
      "user_id": col("users.parquet", "user_id"),
      "user_age": col("users.parquet", "age_bucket"),
      "user_gender": col("users.parquet", "gender"),
      "user_activity": col("users.parquet", "activity_bucket"),
      "hour_of_day": np.arange(24),
      "live_id": col("lives.parquet", "live_id"),
      "author_id": np.union1d(live_authors, col("lives.parquet", "author_id")),
      "live_category": col("lives.parquet", "category"),
      "author_fans_bucket": authors.column("fans_bucket").to_numpy(),
      "sv_item": col("videos.parquet", "video_id"),
      "sv_author": video_authors,
      "sv_category": col("videos.parquet", "category"),
      "sv_tag": col("videos.parquet", "tag"),
  }


def collision_report(source, cfg: ml_collections.ConfigDict) -> dict[str, dict]:
  """table -> {"rows", "distinct_ids", "colliding_ids", "collision_rate"}.

  Args:
    source: a log folder path, or a dict of integer arrays keyed by sample field name.
    cfg: the model config (vocab sizes).
  """
  fields = _log_fields(source) if isinstance(source, (str, os.PathLike)) else source
  full = ml_collections.ConfigDict(cfg.to_dict())
  full.use_sv_history = full.use_lv_history = full.contrastive.author_level = True
  keys = {}  # table -> list of (salt, distinct ids)
  for f in E.feature_plan(full):
    if f.name in _DERIVED or f.field not in fields:
      continue
    keys.setdefault(f.table, {}).setdefault(f.salt, []).append(np.asarray(fields[f.field]))
  report = {}
  for table, by_salt in keys.items():
    vocab = int(cfg.embedding.vocab[table])
    rows = [E.hash_ids(np.unique(np.concatenate([a.reshape(-1) for a in arrays])), salt,
                       vocab, xp=np) for salt, arrays in by_salt.items()]
    rows = np.concatenate(rows)
    n_bad = _colliding(rows)
    report[table] = {"rows": vocab, "distinct_ids": int(rows.size), "colliding_ids": n_bad,
                     "collision_rate": n_bad / max(rows.size, 1)}
  return report
