"""Histories by reference: stored samples + history stores read back as the engine's tables."""

import os

import numpy as np
import pytest

from mcjax.moment import MomentConfig
from mcjax.moment.engine import SampleBuilder
from mcjax.moment.synth import random_log
from mcjax.contract import history_store as H
from mcjax.contract import schema as S
from mcjax.samples import shards
from mcjax.samples import table as sample_table


def _assert_tables_equal(got, want):
  for name in [f.name for f in S.FIELDS] + list(S.OFFSETS.values()):
    assert got[name].dtype == want[name].dtype, name
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("features_at", ["exposure", "sample"])
def test_engine_shards_read_back_as_in_memory_samples(tmp_path, features_at):
  log = random_log(300, users=20, lives=4, hours=0.5, seed=3)
  builder = SampleBuilder(log, MomentConfig(features_at=features_at, window_s=20,
                                            sv_hist_len=7, lv_hist_len=3))
  for split in ("train", "eval"):
    want = builder.tables(split).__next__()
    shards.write_samples(builder.tables(split, chunk_rows=97, stored=True), str(tmp_path),
                         split, history=builder.history, block_size=16)
    src = shards.open_samples(str(tmp_path), split)
    assert len(src) == len(want["sample_ts_ms"])
    rows = np.random.default_rng(0).permutation(len(src))[:150]
    _assert_tables_equal(src.__getitems__(rows), sample_table.take_rows(want, rows))
    _assert_tables_equal(src.__getitems__(np.arange(len(src))), want)
  lv_n = np.diff(want["lv_offsets"])
  assert lv_n.max() == 3 and np.diff(want["sv_offsets"]).max() == 7  # truncated
  # the stored records are small: no sequence is copied into a sample
  info = shards.read_info(os.path.join(str(tmp_path), "eval"))
  assert info["history_records"]["sv"] == len(builder.history["sv"])


def test_live_snapshot_skips_the_current_exposure_by_reference():
  # user 1 has live exposures at t = 0, 10, 20 s; sample of the middle one at 30 s sees the
  # other two (most recent first), never itself
  lv = H.HistoryStore(
      "lv", {"lv_item": [5, 6, 7], "lv_author": [1, 1, 2], "lv_category": [0, 0, 0],
             "lv_ts_ms": [0, 10_000, 20_000]},
      np.full((3, len(S.LIVE_ACTION_BITS)), H.NEVER),
      {"lv_watch_s": ([3.0, 4.0, 5.0], [5_000, 25_000, 40_000])})
  seq, off = lv.materialize(end=[3], n=[2], skip=[1], q=[30_000])
  assert off.tolist() == [0, 2]
  assert seq["lv_item"].tolist() == [7, 5]
  assert seq["lv_watch_s"].tolist() == [0.0, 3.0]  # the newest watch ends after q


def test_action_bits_and_watch_follow_the_query_time():
  sv = H.HistoryStore("sv", {"sv_item": [1, 2], "sv_author": [0, 0], "sv_category": [0, 0],
                             "sv_tag": [0, 0], "sv_ts_ms": [0, 1], "sv_progress": [0.5, 1.0]},
                      [[100, H.NEVER], [50, 200]], {})
  for q, bits in ((100, [1, 0]), (101, [1, 1]), (201, [3, 1])):
    seq, _ = sv.materialize(end=[2], n=[2], skip=[-1], q=[q])
    assert seq["sv_action"].tolist() == bits, q  # newest (item 2) first


def test_save_load_round_trip_and_bad_references(tmp_path):
  table = sample_table.random_sample_table(30, max_sv=6, max_lv=3, seed=1)
  stored, stores = H.store_table(table)
  for p, store in stores.items():
    store.save(str(tmp_path / p))
  loaded = {p: H.HistoryStore.load(str(tmp_path / p), p) for p in S.DOMAINS}
  _assert_tables_equal(H.materialize_table(stored, loaded), sample_table.conform_table(table))
  bad = dict(stored, sv_hist_end=stored["sv_hist_end"] + 10_000)
  with pytest.raises(IndexError, match="sv history reference out of range"):
    H.materialize_table(bad, loaded)
  os.remove(tmp_path / "lv" / "lv_watch_s.visible_ts.npy")
  with pytest.raises(ValueError, match="lv_watch_s.visible_ts.npy"):
    H.HistoryStore.load(str(tmp_path / "lv"), "lv")


def test_unknown_action_bits_are_refused(tmp_path):
  table = sample_table.random_sample_table(5, max_sv=4, max_lv=2, seed=2)
  table["sv_action"] = np.full_like(table["sv_action"], 8)
  with pytest.raises(ValueError, match="'sv_action' has bits 8"):
    shards.write_samples(table, str(tmp_path), "train")
  assert os.listdir(tmp_path) == []
