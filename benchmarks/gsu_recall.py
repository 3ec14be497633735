"""Recall of the approximate GSU pre-scores: the share of the exact top-k that survives the
cut to ``candidates`` positions, on random histories with and without planted structure.

    python -m benchmarks.gsu_recall [--candidates=32,64,128,256]

Data (``planted``): an item and an author table of random unit-scale rows, random query
projections u_item, u_author per example, 2,000-position histories (the last 100 padding);
with planting, 32 positions per example hold items whose rows point along the example's
u_item (plus noise) and its own author, whose row points along u_author: the structure a
GSU is meant to find. Without planting every row is random. The exact top-k is that of the
f32 pre-score (the soft GSU's item + author score, ``gsu.owner_scores("f32")``); recall =
|exact top-k among the candidates| / k, averaged over the batch. One CPU device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mcjax.model import gsu


def planted(seed: int = 0, batch: int = 16, length: int = 2000, rows: int = 5000,
            dim: int = 32, plant: int = 32):
  """[(items, item ids, u_item), (authors, author ids, u_author)] (see the module doc);
  ``plant=0``: no structure."""
  rng = np.random.default_rng(seed)
  items = rng.normal(size=(rows, dim)).astype(np.float32) / np.sqrt(dim)
  authors = rng.normal(size=(rows // 5, dim)).astype(np.float32) / np.sqrt(dim)
  u_item = rng.normal(size=(batch, dim)).astype(np.float32)
  u_author = rng.normal(size=(batch, dim)).astype(np.float32)
  item_ids = rng.integers(0, rows, (batch, length)).astype(np.int32)
  author_ids = rng.integers(0, rows // 5, (batch, length)).astype(np.int32)
  for b in range(batch if plant else 0):
    pos = rng.choice(length, plant, replace=False)
    item_ids[b, pos] = b * plant + np.arange(plant)  # own rows per example
    author_ids[b, pos] = b
    items[item_ids[b, pos]] = (u_item[b] / np.linalg.norm(u_item[b])
                               + 0.5 * rng.normal(size=(plant, dim)) / np.sqrt(dim))
    authors[b] = u_author[b] / np.linalg.norm(u_author[b])
  return [(jnp.asarray(items), jnp.asarray(item_ids), jnp.asarray(u_item)),
          (jnp.asarray(authors), jnp.asarray(author_ids), jnp.asarray(u_author))]


def recall(kind: str, triples, length, k: int, candidates: int) -> float:
  """Mean share of the exact (f32) top-k positions among the ``kind`` pre-score's
  ``candidates`` positions."""
  exact = gsu.owner_scores("f32", triples)
  valid = gsu.valid_positions(length, exact.shape[1])
  top = gsu.top_k_indices(jnp.where(valid, exact, -jnp.inf), k)
  cand, _ = gsu.preselect(gsu.owner_scores(kind, triples), length, 0, candidates)
  return float(np.mean([len(set(t) & set(c)) / k
                        for t, c in zip(np.asarray(top), np.asarray(cand))]))


def main(argv) -> None:
  del argv
  length = jnp.full((16,), 1900, jnp.int32)
  print("| data | pre-score | " + " | ".join(f"recall@{c} candidates" for c in
                                              _CANDIDATES.value) + " |")
  print("|---|---|" + "---|" * len(_CANDIDATES.value))
  for name, plant in (("planted", 32), ("random", 0)):
    triples = planted(plant=plant, seed=0 if plant else 1)
    for kind in ("bf16", "simhash"):
      cells = [f"{recall(kind, triples, length, 32, int(c)):.3f}" for c in _CANDIDATES.value]
      print(f"| {name} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  from absl import app, flags
  _CANDIDATES = flags.DEFINE_list("candidates", ["32", "64", "128", "256"],
                                  "Candidate counts (exact top-32 recall at each).")
  app.run(main)
