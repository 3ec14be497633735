"""The Grain pipeline: padding and weights, truncation, process sharding, iterator state."""

import numpy as np
import pytest

from mcjax.contract import batch as batch_lib

from mcjax.samples import loader
from mcjax.contract import schema as S
from mcjax.samples import shards
from mcjax.samples import table as sample_table

N = 50


@pytest.fixture(scope="module")
def table():
  return sample_table.conform_table(sample_table.random_sample_table(N, max_sv=9, max_lv=4, seed=5))


def _all(it):
  return list(it)


def test_padding_weights_and_fixed_shapes(table):
  src = sample_table.TableSource(table)
  batches = _all(loader.make_batches(src, batch_size=16, sv_len=6, lv_len=3,
                                       process_index=0, process_count=1))
  assert len(batches) == 4 == loader.num_batches(N, 16)
  for b in batches:
    assert b["sv_item"].shape == (16, 6) and b["lv_watch_s"].shape == (16, 3)
    assert b["crowd"].shape == (16, len(S.CROWD_FEATURES))
    assert set(b) == {f.name for f in S.FIELDS} | set(batch_lib.EXTRA_FIELDS)
  np.testing.assert_array_equal(batches[-1]["weight"], [1.0] * 2 + [0.0] * 14)
  assert not batches[-1]["user_id"][2:].any()
  users = np.concatenate([b["user_id"][b["weight"] > 0] for b in batches])
  np.testing.assert_array_equal(users, table["user_id"])  # time order kept
  dropped = _all(loader.make_batches(src, batch_size=16, sv_len=6, lv_len=3,
                                       drop_remainder=True, process_index=0, process_count=1))
  assert len(dropped) == 3 and all(b["weight"].all() for b in dropped)


def test_truncation_keeps_most_recent_items(table):
  src = sample_table.TableSource(table)
  rows = np.arange(10, 20)
  b = next(iter(loader.make_batches(src, batch_size=10, sv_len=4, lv_len=2, indices=rows,
                                      process_index=0, process_count=1)))
  off = table["sv_offsets"]
  for j, r in enumerate(rows):
    seq = table["sv_ts_ms"][off[r]:off[r + 1]]
    k = min(len(seq), 4)
    assert b["sv_len"][j] == k
    np.testing.assert_array_equal(b["sv_ts_ms"][j, :k], seq[:k])  # the first = most recent
    assert not b["sv_ts_ms"][j, k:].any()
  ref = S.pad_sequences({n: [table[n][off[r]:off[r + 1]] for r in rows] for n in S.SV_FIELDS},
                        sv_len=4, lv_len=2)
  for n in S.SV_FIELDS + ("sv_len",):
    np.testing.assert_array_equal(b[n], ref[n], err_msg=n)


def test_two_processes_union_equals_single_process(table):
  src = sample_table.TableSource(table)
  kw = dict(batch_size=12, sv_len=5, lv_len=3, shuffle=True, seed=7, num_epochs=2)
  single = _all(loader.make_batches(src, process_index=0, process_count=1, **kw))
  parts = [_all(loader.make_batches(src, process_index=p, process_count=2, **kw))
           for p in range(2)]
  assert len(single) == len(parts[0]) == len(parts[1]) == 10
  for g, a, b in zip(single, *parts):
    for name in g:
      np.testing.assert_array_equal(g[name], np.concatenate([a[name], b[name]]), err_msg=name)
  epoch0 = np.concatenate([b["exposure_id"][b["weight"] > 0] for b in single[:5]])
  epoch1 = np.concatenate([b["exposure_id"][b["weight"] > 0] for b in single[5:]])
  assert sorted(epoch0) == sorted(epoch1) == sorted(table["exposure_id"])
  assert not np.array_equal(epoch0, epoch1)


def test_iterator_state_round_trip(table):
  src = sample_table.TableSource(table)
  kw = dict(batch_size=8, sv_len=4, lv_len=2, shuffle=True, seed=1, num_epochs=2,
            process_index=0, process_count=1)
  it = iter(loader.make_batches(src, **kw))
  for _ in range(5):
    next(it)
  state = it.get_state()
  rest = list(it)
  fresh = iter(loader.make_batches(src, **kw))
  fresh.set_state(state)
  again = list(fresh)
  assert len(again) == len(rest) == 9
  for a, b in zip(rest, again):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_shuffle_is_block_aware_permutation():
  pos = loader.shuffled_positions(1000, seed=0, epoch=0, chunk=64, window=128)
  np.testing.assert_array_equal(np.sort(pos), np.arange(1000))
  assert len(np.unique(pos[:128] // 64)) <= 4  # a window touches few blocks


def test_reads_from_shards(table, tmp_path):
  shards.write_samples(table, str(tmp_path), "train", block_size=8, num_shards=2)
  src = shards.open_samples(str(tmp_path), "train")
  ts = shards.sample_ts_ms(src)
  window = np.flatnonzero((ts >= ts[10]) & (ts < ts[30]))
  from_disk = _all(loader.make_batches(src, batch_size=8, sv_len=6, lv_len=3,
                                         indices=window, process_index=0, process_count=1))
  in_memory = _all(loader.make_batches(sample_table.TableSource(table), batch_size=8, sv_len=6,
                                         lv_len=3, indices=window, process_index=0,
                                         process_count=1))
  for a, b in zip(from_disk, in_memory):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_bad_arguments(table):
  src = sample_table.TableSource(table)
  with pytest.raises(ValueError, match="batch_size"):
    loader.make_batches(src, batch_size=0, sv_len=1, lv_len=1)
  with pytest.raises(ValueError, match="process_count"):
    loader.make_batches(src, batch_size=5, sv_len=1, lv_len=1, process_index=0,
                          process_count=2)
  with pytest.raises(ValueError, match="indices"):
    loader.make_batches(src, batch_size=5, sv_len=1, lv_len=1, indices=[N])
