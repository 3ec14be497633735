"""DeepCTR-Torch DIN trained and evaluated online on mcjax's exported samples and windows.

Runs in the peer venv only (``bash experiments/peers/setup.sh``), from the repository root,
on a file written by ``experiments/peers/export_samples.py``:

    experiments/peers/.venv/bin/python -m experiments.peers.din_ablation \
        --data=runs/ablation/seed_0/din_data.npz --out_dir=runs/ablation/seed_0/din

Model: DIN with target attention of the candidate (live, author) over the live history
(``hist_live``, ``hist_author``); the short-video history enters as a second behaviour
sequence, mean-pooled (DIN attends over one sequence): its authors share the author embedding
with the candidate, its categories have their own table; plus user, category, hour of day and
the real-time crowd features (log1p, z-scored, dense). Loop, as mcjax's online mode: for each
window, score its evaluation records, then train one pass over its CTR training samples
(Adagrad, lr 0.05: mcjax's embedding optimizer; ``--optimizer=adam --lr=1e-3`` is DeepCTR's
usual setting).
Writes ``OUT_DIR/preds.npz`` (probs / labels / mask [n, 1] for CTR, user_id, exposure_id,
in_highlight, lv_len: what mcjax's metrics and slices read) and ``OUT_DIR/done.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import deepctr_torch
from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
from deepctr_torch.models import DIN


def feature_columns(data, dim: int):
  vocab = dict(zip(data["vocab_names"].tolist(), data["vocab"].tolist()))
  lv_len, sv_len = data["train_hist_live"].shape[1], data["train_sv_author"].shape[1]
  cols = [SparseFeat(name, vocab[name], embedding_dim=dim)
          for name in ("user", "live", "author", "category", "hour")]
  cols.append(DenseFeat("crowd", data["train_crowd"].shape[1]))
  cols += [VarLenSparseFeat(SparseFeat(f"hist_{name}", vocab[name], embedding_dim=dim,
                                       embedding_name=name), maxlen=lv_len,
                            length_name="hist_len")
           for name in ("live", "author")]
  cols += [VarLenSparseFeat(SparseFeat("sv_author", vocab["author"], embedding_dim=dim,
                                       embedding_name="author"), maxlen=sv_len,
                            combiner="mean"),
           VarLenSparseFeat(SparseFeat("sv_category", vocab["sv_category"], embedding_dim=dim),
                            maxlen=sv_len, combiner="mean")]
  return cols


def inputs(data, split: str, lo: int, hi: int, names) -> dict:
  return {n: data[f"{split}_{n}"][lo:hi] for n in names}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", required=True, help="the .npz written by export_samples.py")
  ap.add_argument("--out_dir", required=True)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--dim", type=int, default=16)
  ap.add_argument("--batch_size", type=int, default=256)
  ap.add_argument("--optimizer", choices=("adagrad", "adam"), default="adagrad",
                  help="adagrad (default) matches mcjax's row-wise Adagrad for embeddings")
  ap.add_argument("--lr", type=float, default=0.05)
  ap.add_argument("--init_std", type=float, default=0.01,
                  help="embedding init std; DeepCTR's default 1e-4 left DIN's predictions "
                       "constant after one online pass (AUC 0.5)")
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()
  if not os.path.exists(args.data):
    sys.exit(f"--data: {args.data} does not exist (write it with export_samples.py)")
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  data = dict(np.load(args.data))
  cols = feature_columns(data, args.dim)
  names = [c.name for c in cols] + ["hist_len"]
  model = DIN(cols, ["live", "author"], dnn_hidden_units=(128, 64), att_hidden_size=(64, 16),
              init_std=args.init_std, seed=args.seed, device="cpu")
  opt = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}[args.optimizer]
  model.compile(opt(model.parameters(), lr=args.lr), "binary_crossentropy")
  n_eval = len(data["eval_user"])
  probs = np.zeros(n_eval, np.float32)
  t0, steps = time.time(), 0
  for e_lo, e_hi, t_lo, t_hi in data["windows"]:
    if e_hi > e_lo:
      probs[e_lo:e_hi] = model.predict(inputs(data, "eval", e_lo, e_hi, names),
                                       batch_size=1024).ravel()
    if t_hi > t_lo:
      model.fit(inputs(data, "train", t_lo, t_hi, names), data["train_y"][t_lo:t_hi],
                batch_size=args.batch_size, epochs=1, verbose=0, shuffle=True)
      steps += -(-(t_hi - t_lo) // args.batch_size)
  wall = time.time() - t0
  os.makedirs(args.out_dir, exist_ok=True)
  ctr = 0  # CTR is the first task of mcjax's TASKS
  np.savez(os.path.join(args.out_dir, "preds.npz"), probs=probs[:, None],
           labels=data["eval_labels"][:, ctr:ctr + 1], mask=data["eval_mask"][:, ctr:ctr + 1],
           user_id=data["eval_user_id"], exposure_id=data["eval_exposure_id"],
           in_highlight=data["eval_in_highlight"], lv_len=data["eval_lv_len"])
  info = {
      "versions": f"torch {torch.__version__}, deepctr-torch {deepctr_torch.__version__}, "
                  f"python {sys.version.split()[0]}",
      "command": "experiments/peers/.venv/bin/python -m experiments.peers.din_ablation "
                 "--data=WORKDIR/seed_S/din_data.npz --out_dir=WORKDIR/seed_S/din "
                 f"--seed=S --dim={args.dim} --batch_size={args.batch_size} "
                 f"--optimizer={args.optimizer} --lr={args.lr} --init_std={args.init_std}",
      "description": (
          "DIN (DeepCTR-Torch): target attention of the candidate (live, author) over the "
          "live history; the short-video history (authors, sharing the author embedding, "
          "and categories) mean-pooled as a second behaviour sequence; user, category, hour "
          "and the real-time crowd features (log1p, z-scored) as inputs; single task (CTR), "
          "trained "
          f"online on `full`'s first-only CTR samples with {args.optimizer} "
          f"(lr {args.lr}, batch {args.batch_size}, dim {args.dim}, embedding init std "
          f"{args.init_std}, DNN 128-64)."),
      "train_rows": int(len(data["train_y"])), "eval_rows": int(n_eval),
      "windows": int(len(data["windows"])), "steps": int(steps), "wall_s": round(wall, 1)}
  with open(os.path.join(args.out_dir, "done.json"), "w") as f:
    json.dump(info, f, indent=1)
  print(json.dumps(info))


if __name__ == "__main__":
  main()
