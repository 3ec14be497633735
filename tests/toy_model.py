"""A tiny model implementing the interface the train step consumes (lookup_ids / gather /
apply_rows), on the sample schema's fields, plus a masked BCE loss."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mcjax.model.embedding import Embedding
from mcjax.contract import schema


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  user_vocab: int = 64  # "vocab": row-sharded on "model"
  item_vocab: int = 32  # "vocab_small": replicated
  dim: int = 8
  hidden: int = 16
  table_class: type = Embedding


class ToyModel(nnx.Module):
  """user and item tables -> [user, live, mean(short-video history), log crowd] -> MLP."""

  def __init__(self, cfg: ToyConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = nnx.initializers.normal(0.1)
    self.user = cfg.table_class(nnx.with_partitioning(init, ("vocab", "embed"))(
        rngs.params(), (cfg.user_vocab, cfg.dim)))
    self.item = cfg.table_class(nnx.with_partitioning(init, ("vocab_small", "embed"))(
        rngs.params(), (cfg.item_vocab, cfg.dim)))
    n_in = 3 * cfg.dim + len(schema.CROWD_FEATURES)
    self.hidden = nnx.Linear(n_in, cfg.hidden, kernel_init=init, rngs=rngs)
    self.head = nnx.Linear(cfg.hidden, len(schema.TASKS), kernel_init=init, rngs=rngs)

  def lookup_ids(self, batch):
    live = batch["live_id"][:, None]
    items = jnp.concatenate([live, batch["sv_item"]], axis=1)
    return {"user": (batch["user_id"] % self.cfg.user_vocab).astype(jnp.int32),
            "item": (items % self.cfg.item_vocab).astype(jnp.int32)}

  def gather(self, ids):
    return {k: jnp.take(getattr(self, k)[...], v, axis=0) for k, v in ids.items()}

  def apply_rows(self, batch, rows, train: bool = False):
    del train
    items = rows["item"]
    valid = jnp.arange(items.shape[1] - 1)[None, :] < batch["sv_len"][:, None]
    hist = jnp.sum(items[:, 1:] * valid[..., None], axis=1) / jnp.maximum(
        jnp.sum(valid, axis=1, keepdims=True), 1)
    x = jnp.concatenate([rows["user"], items[:, 0], hist, jnp.log1p(batch["crowd"])], axis=-1)
    return {"logits": self.head(jax.nn.relu(self.hidden(x)))}


def build_model(cfg: ToyConfig, *, rngs: nnx.Rngs) -> ToyModel:
  return ToyModel(cfg, rngs=rngs)


def bce_loss(out, batch):
  """Masked mean binary cross-entropy over tasks: (total, {"bce": total})."""
  per = optax.sigmoid_binary_cross_entropy(out["logits"], batch["labels"])
  mask = batch["label_mask"]
  total = jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return total, {"bce": total}
