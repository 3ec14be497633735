"""DeepCTR-Torch DIN training throughput, timed by mcjax's harness (``benchmarks/harness.py``).

Runs in the peer venv only (``bash experiments/peers/setup.sh``), from the repository root:

    experiments/peers/.venv/bin/python -m experiments.peers.din_bench \
        --batch_size=1024 --hist_len=50 --dim=32 --json_out=din.json

The step is DeepCTR-Torch's own ``fit`` inner loop (forward, BCE + regularisation loss,
backward, optimizer step) on synthetic batches: user, candidate item and category, a
behaviour sequence of items and categories of ``hist_len`` (random valid lengths), sharing
the candidate's embeddings, as in DeepCTR's DIN example. Same harness as the mcjax step:
untimed first call and warm-up, ``repeats`` x ``steps`` timed, median ms/step.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
from deepctr_torch.models import DIN

from benchmarks import harness  # framework-free timing, shared with mcjax


def build(args):
  feats = [SparseFeat("user", args.users, embedding_dim=args.dim),
           SparseFeat("item_id", args.items, embedding_dim=args.dim),
           SparseFeat("cate_id", args.cates, embedding_dim=args.dim)]
  feats += [VarLenSparseFeat(SparseFeat("hist_item_id", args.items, embedding_dim=args.dim,
                                        embedding_name="item_id"),
                             maxlen=args.hist_len, length_name="seq_length"),
            VarLenSparseFeat(SparseFeat("hist_cate_id", args.cates, embedding_dim=args.dim,
                                        embedding_name="cate_id"),
                             maxlen=args.hist_len, length_name="seq_length")]
  model = DIN(feats, ["item_id", "cate_id"], device="cpu", att_weight_normalization=True)
  model.compile(args.optimizer, "binary_crossentropy")
  return model


def batch(model, args, seed: int):
  """The flat input tensor DeepCTR's fit builds (columns in model.feature_index order)."""
  rng = np.random.default_rng(seed)
  b, l = args.batch_size, args.hist_len
  lengths = rng.integers(1, l + 1, b)
  pad = np.arange(l)[None, :] < lengths[:, None]
  cols = {"user": rng.integers(1, args.users, (b, 1)),
          "item_id": rng.integers(1, args.items, (b, 1)),
          "cate_id": rng.integers(1, args.cates, (b, 1)),
          "hist_item_id": rng.integers(1, args.items, (b, l)) * pad,
          "hist_cate_id": rng.integers(1, args.cates, (b, l)) * pad,
          "seq_length": lengths[:, None]}
  x = np.concatenate([cols[name] for name in model.feature_index], axis=-1)
  y = (rng.random(b) < 0.2).astype(np.float32)
  return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch_size", type=int, default=1024)
  p.add_argument("--hist_len", type=int, default=50)
  p.add_argument("--dim", type=int, default=32)
  p.add_argument("--users", type=int, default=100_000)
  p.add_argument("--items", type=int, default=200_000)
  p.add_argument("--cates", type=int, default=4_096)
  p.add_argument("--optimizer", default="adagrad")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = build(args)
  model.train()
  optim, loss_fn = model.optim, F.binary_cross_entropy
  batches = [batch(model, args, s) for s in range(4)]

  def step(i):
    x, y = batches[i % len(batches)]
    y_pred = model(x).squeeze()
    optim.zero_grad()
    loss = loss_fn(y_pred, y, reduction="sum") + model.get_regularization_loss() + model.aux_loss
    loss.backward()
    optim.step()
    return loss

  timing = harness.time_steps(step, block=lambda loss: float(loss), warmup=args.warmup,
                              steps=args.steps, repeats=args.repeats)
  out = harness.summary(timing, examples_per_step=args.batch_size)
  out.update(model="deepctr_torch.DIN", torch=torch.__version__,
             torch_threads=torch.get_num_threads(), **vars(args))
  text = json.dumps(out, indent=1)
  print(text)
  if args.json_out:
    with open(args.json_out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
