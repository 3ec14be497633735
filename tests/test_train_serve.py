"""Train = serve: every model input of a training sample equals what a serving request for the
same exposure sees (its evaluation record: features at the exposure time), input by input,
after every host and device transform; the model and the loss read nothing else.

Fails on code that reads the emission time (``sample_ts_ms``) anywhere in the forward pass,
e.g. history time gaps bucketed against it: a CLOSE sample of a non-click is emitted
``no_click_close_s`` after its exposure, a click's at its watch end, so such an input shifts
with the label.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcjax import losses
from mcjax.model import build_model, embedding
from mcjax.moment import MomentConfig
from mcjax.moment.engine import SampleBuilder
from mcjax.contract import schema
from mcjax.contract import batch as batch_lib
from mcjax.sim import world
from mcjax.contract.batch import host_batch
from test_model import tiny

SV, LV = 12, 6


@pytest.fixture(scope="module")
def log(tmp_path_factory):
  return world.build(str(tmp_path_factory.mktemp("w") / "world"), "small", 5, live_exposures=4000)


@pytest.fixture(scope="module")
def model_fn():
  """A random-init model reading every input (both histories, crowd, match features, PLE);
  returns (cfg, fn(batch) -> (lookup ids, every inline feature's ids, logits))."""
  cfg = tiny(**{"towers.kind": "ple", "contrastive.author_level": True})
  graphdef, state = nnx.split(build_model(cfg, rngs=nnx.Rngs(0)))
  inline = [f.name for f in embedding.feature_plan(cfg) if f.inline]

  @jax.jit
  def run(state, batch):
    m = nnx.merge(graphdef, state)
    ids = m.lookup_ids(batch)
    by_table = {}
    for name in inline:
      table, i = embedding.inline_ids(cfg, batch, [name])
      by_table[name] = i
    return ids, by_table, m(batch)["logits"]

  return cfg, lambda batch: run(state, batch)


def _device_batch(table: dict) -> dict:
  """A sample table -> the batch a device receives (padded, host_batch'ed)."""
  batch = batch_lib.pad_table(table, SV, LV)
  batch["weight"] = np.ones(len(batch["user_id"]), np.float32)
  return host_batch(batch)


@pytest.mark.parametrize("mode", ["realtime", "on_close", "fast_slow"])
def test_training_inputs_equal_serving_inputs(log, model_fn, mode):
  cfg, run = model_fn
  builder = SampleBuilder(log, MomentConfig(mode=mode, sv_hist_len=SV, lv_hist_len=LV))
  train = _device_batch(next(builder.tables("train")))
  serve = _device_batch(next(builder.tables("eval")))
  raw_train = next(builder.tables("train"))
  raw_eval = next(builder.tables("eval"))
  # each training sample's serving request: the evaluation record of its exposure
  order = np.argsort(raw_eval["exposure_id"])
  pos = order[np.searchsorted(raw_eval["exposure_id"], raw_train["exposure_id"], sorter=order)]
  assert np.array_equal(raw_eval["exposure_id"][pos], raw_train["exposure_id"])
  # the emission time differs from the query time for most samples (else this proves little)
  assert np.mean(raw_train["sample_ts_ms"] != raw_train["query_ts_ms"]) > 0.5
  assert train["sv_len"].max() > 0 and train["lv_len"].max() > 0

  # 1. no host-only field reaches a device; every model input is present
  for batch in (train, serve):
    assert not set(schema.HOST_ONLY) & set(batch)
    assert set(schema.MODEL_INPUTS) <= set(batch)
  # 2. the fields the model may read, field by field
  for name in schema.MODEL_INPUTS:
    np.testing.assert_array_equal(train[name], serve[name][pos], err_msg=name)

  # 3. what reaches the tables and the dense layers: hashed ids of every looked-up and inline
  # feature, and the logits, on batches holding only the model's inputs
  only = lambda b, rows: {k: b[k][rows] for k in schema.MODEL_INPUTS}  # noqa: E731
  n = min(256, len(pos))
  for lo in range(0, len(pos), max(1, len(pos) // 4))[:4]:
    rows = np.arange(lo, min(lo + n, len(pos)))
    ids_t, inline_t, logits_t = run(only(train, rows))
    ids_s, inline_s, logits_s = run(only(serve, pos[rows]))
    for a, b in zip(jax.tree.leaves((ids_t, inline_t)), jax.tree.leaves((ids_s, inline_s))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(logits_t), np.asarray(logits_s))


def test_loss_reads_only_inputs_and_targets(model_fn):
  """The loss needs nothing host-only either: inputs + targets + weight are enough."""
  cfg, _ = model_fn
  graphdef, state = nnx.split(build_model(cfg, rngs=nnx.Rngs(1)))
  batch = host_batch(schema.dummy_batch(8, SV, LV) | {"weight": np.ones(8, np.float32)})
  targets = [f.name for f in schema.FIELDS if f.role == "target"] + ["weight"]
  batch = {k: batch[k] for k in list(schema.MODEL_INPUTS) + targets}
  total, _ = jax.jit(lambda s, b: losses.compute_loss(nnx.merge(graphdef, s)(b), b,
                                                      losses.loss_config()))(state, batch)
  assert np.isfinite(float(total))


def test_sample_time_never_reaches_the_model(model_fn):
  """Shifting the emission time (or any host-only field) changes nothing the model sees."""
  _, run = model_fn
  batch = schema.dummy_batch(16, SV, LV)
  batch["query_ts_ms"] = np.full(16, 1_746_100_000_000, np.int64)
  for name in ("sv_ts_ms", "lv_ts_ms"):
    batch[name] = batch["query_ts_ms"][:, None] - np.arange(batch[name].shape[1]) * 7_000
  shifted = dict(batch, sample_ts_ms=batch["sample_ts_ms"] + 3_600_000,
                 exposure_ts_ms=batch["exposure_ts_ms"] - 5, exposure_id=batch["exposure_id"] + 1)
  a, b = (host_batch(x) for x in (batch, shifted))
  assert set(a) == set(b) and "sample_ts_ms" not in a
  np.testing.assert_array_equal(np.asarray(run(a)[2]), np.asarray(run(b)[2]))
  # ... while the query time is an input: the gaps move with it
  later = host_batch(dict(batch, query_ts_ms=batch["query_ts_ms"] + 3_600_000))
  assert not np.array_equal(np.asarray(run(a)[2]), np.asarray(run(later)[2]))


def test_ids_differing_only_in_high_bits_keep_their_rows():
  """64-bit ids reach the hash whole: the host folds all 64 bits (not a truncation), and the
  numpy hash (collision reports) equals the device path."""
  lo = np.array([7, 123456, 2**31 - 1], np.int64)
  ids = np.concatenate([lo, lo + (np.int64(1) << 32), lo + (np.int64(5) << 40)])
  folded = batch_lib.fold_ids(ids)
  assert folded.dtype == np.int32
  assert len(np.unique(folded)) == len(ids)
  np.testing.assert_array_equal(folded[:3], lo.astype(np.int32))  # identity in int32 range
  batch = host_batch({"user_id": ids, "sv_ts_ms": ids})
  np.testing.assert_array_equal(batch["user_id"], folded)
  np.testing.assert_array_equal(batch["sv_ts_ms"], ids.astype(np.int32))  # times only wrap
  vocab = 1 << 20
  device = np.asarray(embedding.hash_ids(jnp.asarray(batch["user_id"]), "user", vocab))
  np.testing.assert_array_equal(device, embedding.hash_ids(ids, "user", vocab, xp=np))
  assert len(np.unique(device)) == len(ids)
  # negative and uint64 ids fold too
  u = np.array([2**64 - 1, 2**63, 5], np.uint64)
  assert len(np.unique(batch_lib.fold_ids(u))) == 3


def test_collision_report_counts_what_training_hashes(tmp_path):
  """collision_report's figure is the one the device path produces: ids folded by host_batch,
  hashed on the device; ids differing only in high bits are not reported as colliding."""
  from mcjax.model import collisions
  from mcjax import report
  cfg = tiny()
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 2**62, 3000, dtype=np.int64)
  ids = np.concatenate([ids, ids[:500] ^ (np.int64(1) << 40)])  # same low word
  rep = collisions.collision_report({"user_id": ids}, cfg)["user"]
  device = np.asarray(embedding.hash_ids(jnp.asarray(host_batch({"user_id": ids})["user_id"]),
                                         "user", cfg.embedding.vocab["user"]))
  _, inverse, counts = np.unique(device, return_inverse=True, return_counts=True)
  assert rep["distinct_ids"] == len(np.unique(ids))
  assert rep["colliding_ids"] == int((counts[inverse] > 1).sum())
  # with a large table, the 500 high-bit pairs stay apart (truncation would merge them all)
  cfg.embedding.vocab["user"] = 1 << 22
  big = collisions.collision_report({"user_id": ids}, cfg)["user"]
  assert big["colliding_ids"] < 100
  path = report.write_report(str(tmp_path), {}, collisions={"user": rep})
  assert "collision rate" in open(path).read()
