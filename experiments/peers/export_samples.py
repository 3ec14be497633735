"""Exports an mcjax sample cache (train samples, evaluation records, online windows) to one
.npz that the DeepCTR-Torch peer (``din_ablation.py``, in the peer venv) reads with numpy.

    from experiments.peers import export_samples
    export_samples.export("runs/ablation/seed_0/samples/realtime-...", "din_data.npz",
                          window_min=10.0, sv_len=64, lv_len=32)

What the peer gets, per split (``train_*`` / ``eval_*``), ids remapped to 1..V (0 = padding)
per id space so they index ``nn.Embedding`` tables directly:
``user``, ``live``, ``author``, ``category``, ``hour`` [n]; ``crowd`` [n, C] (log1p of the
real-time crowd features, z-scored with the train rows' mean and std); ``hist_live``,
``hist_author``, ``hist_category`` [n, lv_len] and
``hist_len`` (the live history, most recent first); ``sv_author``, ``sv_category``
[n, sv_len] and ``sv_len`` (the short-video history; authors share the live author space).
Train rows are the samples whose CTR label is trained (``label_mask[ctr] > 0``, i.e. the
first-only Moment semantics), with ``train_y``. Eval rows carry ``eval_labels``,
``eval_mask`` [n, 6], ``eval_user_id``, ``eval_exposure_id``, ``eval_in_highlight``,
``eval_lv_len`` (raw, for mcjax's metrics and slices). ``windows`` [W, 4] holds each online
window's (eval_lo, eval_hi, train_lo, train_hi), as ``mcjax.train.plan.online_windows``.
"""

from __future__ import annotations

import os

import numpy as np

from mcjax.contract import schema as S
from mcjax.samples import shards
from mcjax.train import plan as plan_lib

CTR = S.TASKS.index("ctr")
SCALARS = ("user_id", "live_id", "author_id", "live_category", "hour_of_day", "crowd",
           "labels", "label_mask", "exposure_id", "in_highlight", "sample_ts_ms")


def pad(table: dict, name: str, prefix: str, width: int) -> np.ndarray:
  """A sequence field of a sample table as [n, width], most recent first, 0-padded."""
  off = table[S.OFFSETS[prefix]]
  lens = np.minimum(np.diff(off), width)
  pos = off[:-1, None] + np.arange(width)[None, :]
  valid = np.arange(width)[None, :] < lens[:, None]
  flat = table[name]
  if not len(flat):
    return np.zeros((len(lens), width), flat.dtype)
  return np.where(valid, flat[np.minimum(pos, len(flat) - 1)], 0)


def read_split(samples_dir: str, split: str, sv_len: int, lv_len: int,
               chunk: int = 20_000, ctr_only: bool = False) -> dict:
  """The fields the peer needs of a whole split, sequences padded, read in chunks."""
  src = shards.open_samples(samples_dir, split)
  parts = []
  for lo in range(0, len(src), chunk):
    t = src.__getitems__(np.arange(lo, min(lo + chunk, len(src))))
    keep = t["label_mask"][:, CTR] > 0 if ctr_only else slice(None)
    part = {k: t[k][keep] for k in SCALARS}
    for name, prefix, width in (("lv_item", "lv", lv_len), ("lv_author", "lv", lv_len),
                                ("lv_category", "lv", lv_len), ("sv_author", "sv", sv_len),
                                ("sv_category", "sv", sv_len)):
      part[name] = pad(t, name, prefix, width)[keep]
    part["lv_len"] = np.diff(t["lv_offsets"])[keep]
    part["sv_len"] = np.diff(t["sv_offsets"])[keep]
    parts.append(part)
  if not parts:
    raise ValueError(f"split {split!r} of {samples_dir} is empty")
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def remap(*arrays: np.ndarray) -> list[np.ndarray]:
  """Jointly maps the ids of several arrays to 1..V (0 stays padding where it is padding)."""
  values = np.unique(np.concatenate([a.ravel() for a in arrays]))
  return [(np.searchsorted(values, a) + 1).astype(np.int32) for a in arrays]


def standardize(x: np.ndarray, n_train: int) -> np.ndarray:
  """z-scores with the train rows' mean and std (DIN's DNN diverged on the raw log1p counts)."""
  mu, sd = x[:n_train].mean(0), x[:n_train].std(0)
  return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def export(samples_dir: str, out_path: str, *, window_min: float, sv_len: int,
           lv_len: int) -> str:
  """Writes ``out_path`` (see the module docstring); returns it."""
  tr = read_split(samples_dir, "train", sv_len, lv_len, ctr_only=True)
  ev = read_split(samples_dir, "eval", sv_len, lv_len)
  n_tr = len(tr["user_id"])
  both = {k: np.concatenate([tr[k], ev[k]]) for k in tr}
  lv_valid = np.arange(lv_len)[None, :] < np.minimum(both["lv_len"], lv_len)[:, None]
  sv_valid = np.arange(sv_len)[None, :] < np.minimum(both["sv_len"], sv_len)[:, None]
  user, = remap(both["user_id"])
  live, hist_live = remap(both["live_id"], both["lv_item"])
  author, hist_author, sv_author = remap(both["author_id"], both["lv_author"],
                                         both["sv_author"])
  category, hist_category = remap(both["live_category"], both["lv_category"])
  sv_category, = remap(both["sv_category"])
  cols = {"user": user, "live": live, "author": author, "category": category,
          "hour": both["hour_of_day"].astype(np.int32) + 1,
          "crowd": standardize(np.log1p(np.maximum(both["crowd"], 0)), n_tr),
          "hist_live": hist_live * lv_valid, "hist_author": hist_author * lv_valid,
          "hist_category": hist_category * lv_valid,
          "hist_len": np.minimum(both["lv_len"], lv_len).astype(np.int32),
          "sv_author": sv_author * sv_valid, "sv_category": sv_category * sv_valid,
          "sv_len": np.minimum(both["sv_len"], sv_len).astype(np.int32)}
  out = {}
  for k, v in cols.items():
    out[f"train_{k}"], out[f"eval_{k}"] = v[:n_tr], v[n_tr:]
  out["train_y"] = tr["labels"][:, CTR].astype(np.float32)
  out.update(eval_labels=ev["labels"], eval_mask=ev["label_mask"], eval_user_id=ev["user_id"],
             eval_exposure_id=ev["exposure_id"], eval_in_highlight=ev["in_highlight"],
             eval_lv_len=ev["lv_len"])
  plan = plan_lib.online_windows(ev["sample_ts_ms"], tr["sample_ts_ms"],
                                 int(window_min * 60_000))
  out["windows"] = np.array([[w.eval_lo, w.eval_hi, w.train_lo, w.train_hi] for w in plan],
                            np.int64).reshape(-1, 4)
  spaces = {"user": ("user",), "live": ("live", "hist_live"),
            "author": ("author", "hist_author", "sv_author"),
            "category": ("category", "hist_category"), "hour": ("hour",),
            "sv_category": ("sv_category",)}
  out["vocab_names"] = np.array(list(spaces))
  out["vocab"] = np.array([max(int(cols[k].max()) for k in ks) + 1 for ks in spaces.values()],
                          np.int64)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tmp = out_path + ".tmp.npz"
  np.savez(tmp, **out)
  os.replace(tmp, out_path)
  return out_path
