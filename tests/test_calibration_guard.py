"""A guard against the next train/serve leak: train a small model in every Moment mode on the
first 70% of a world's time, then score the evaluation records of the last 30%.

A model fed inputs at evaluation that it never saw in training collapses in calibration
before its AUC shows it (issue 11: CTR logloss ~3 at a 7% positive rate). The guard fails if

* the evaluation logloss of CTR is above the base-rate logloss of the evaluation records
  (predicting the training positive rate for everyone) by more than 10%, or above twice the
  training logloss, or
* more than 2% of the evaluation predictions fall outside the range of the predictions on
  the training samples.
"""

import functools

import jax
import numpy as np
import pytest

from mcjax import losses, metrics
from mcjax.model import build_model
from mcjax.moment import MomentConfig
from mcjax.moment.engine import SampleBuilder
from mcjax.samples import loader
from mcjax.contract.schema import SLOW
from mcjax.samples.table import TableSource
from mcjax.sim import world
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import state as state_lib
from mcjax.contract import batch as batch_lib
from mcjax.runtime import step as step_lib
from test_model import tiny

SV, LV, BATCH = 8, 4, 128
# the default world's timing, and KuaiLive-M3's (entries at the impression, a 7% entry rate,
# long watch tails), where a leak through emission times shows most
WORLDS = {"small": dict(preset="small", seed=5, live_exposures=4000),
          "m3like": dict(preset="m3like", seed=5, users=600, live_exposures=6000)}


@pytest.fixture(scope="module", params=sorted(WORLDS))
def log(request, tmp_path_factory):
  spec = dict(WORLDS[request.param])
  return world.build(str(tmp_path_factory.mktemp("w") / "world"), spec.pop("preset"),
                     spec.pop("seed"), **spec)


@pytest.fixture(scope="module")
def trainer():
  """(init state, jitted train step, jitted predict) of a tiny model on one device."""
  mesh = mesh_lib.make_mesh((1, 1), devices=jax.devices()[:1])
  optim = state_lib.OptimConfig(learning_rate=3e-3)
  model_def, state, shardings = state_lib.create_train_state(
      functools.partial(build_model, tiny(**{"esu.recent_n": 0})), mesh, optim)
  loss_fn = functools.partial(losses.compute_loss, cfg=losses.loss_config())
  train_step = step_lib.make_train_step(model_def, optim, loss_fn, shardings, mesh,
                                        dense_below_rows=500)
  eval_step = step_lib.make_eval_step(model_def, loss_fn, shardings, mesh)
  initial = jax.device_get(state)  # the train step donates its state: each test starts anew
  return lambda: jax.device_put(initial, shardings), train_step, eval_step


def _predict(eval_step, state, source, idx):
  probs = []
  for batch in loader.make_batches(source, batch_size=512, sv_len=SV, lv_len=LV,
                                     indices=idx, process_index=0, process_count=1):
    probs.append(np.asarray(eval_step(state, batch_lib.host_batch(batch))[0]))
  return np.concatenate(probs)[:len(idx), 0]


@pytest.mark.parametrize("mode", ["realtime", "on_close", "fast_slow"])
def test_evaluation_stays_calibrated(log, trainer, mode):
  init, train_step, eval_step = trainer
  state = init()
  builder = SampleBuilder(log, MomentConfig(mode=mode, sv_hist_len=SV, lv_hist_len=LV))
  train = TableSource(next(builder.tables("train")))
  evals = TableSource(next(builder.tables("eval")))
  split = np.quantile(evals.sample_ts_ms, 0.7)
  train_idx = np.flatnonzero(train.sample_ts_ms < split)
  eval_idx = np.flatnonzero(evals.sample_ts_ms >= split)
  for batch in loader.make_batches(train, batch_size=BATCH, sv_len=SV, lv_len=LV,
                                     indices=train_idx, shuffle=True, seed=0, num_epochs=2,
                                     process_index=0, process_count=1):
    state, m = train_step(state, batch_lib.host_batch(batch))
  assert np.isfinite(float(m["learning/loss"]))

  rows = train.__getitems__(train_idx)
  trained = (rows["label_mask"][:, 0] > 0) & (rows["kind"] != SLOW)
  p_train = _predict(eval_step, state, train, train_idx)
  y_train = rows["labels"][:, 0]
  train_ll = metrics.logloss(y_train[trained], p_train[trained])
  p_eval = _predict(eval_step, state, evals, eval_idx)
  y_eval = evals.__getitems__(eval_idx)["labels"][:, 0]
  eval_ll = metrics.logloss(y_eval, p_eval)
  base_rate = float(np.clip(np.mean(y_train[trained]), 1e-6, 1 - 1e-6))
  base_ll = metrics.logloss(y_eval, np.full(len(y_eval), base_rate))
  outside = np.mean((p_eval < p_train.min()) | (p_eval > p_train.max()))
  report = (f"{mode}: eval logloss {eval_ll:.4f}, base-rate {base_ll:.4f}, train {train_ll:.4f}"
            f", {outside:.2%} outside the training range")
  assert eval_ll <= 1.1 * base_ll, report
  assert eval_ll <= 2.0 * train_ll, report
  assert outside <= 0.02, report
