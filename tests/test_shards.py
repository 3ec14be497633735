"""Sample shards: exact round trip, time order, version check, corruption, atomic writes."""

import json
import os

import numpy as np
import pytest

from mcjax.contract import schema as S
from mcjax.samples import shards
from mcjax.samples import table as sample_table
from mcjax.samples import tfds_builder

N = 50


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("samples"))
  table = sample_table.random_sample_table(N, max_sv=9, max_lv=4, seed=3)
  shards.write_samples(table, out, "train", num_shards=2, block_size=8,
                       metadata={"moment": {"mode": "realtime"}})
  return out, sample_table.conform_table(table)


def test_round_trip_is_exact_for_every_field(written):
  out, table = written
  src = shards.open_samples(out, "train")
  assert len(src) == N
  back = src.__getitems__(np.arange(N))
  for name in [f.name for f in S.FIELDS] + list(S.OFFSETS.values()):
    assert back[name].dtype == table[name].dtype, name
    np.testing.assert_array_equal(back[name], table[name], err_msg=name)
  one = src[7]
  off = table["sv_offsets"]
  np.testing.assert_array_equal(one["sv_item"], table["sv_item"][off[7]:off[8]])
  assert one["user_id"] == table["user_id"][7]


def test_random_rows_and_time_order(written):
  out, table = written
  src = shards.open_samples(out, "train")
  rows = np.random.default_rng(0).permutation(N)[:17]
  got, want = src.__getitems__(rows), sample_table.take_rows(table, rows)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  ts = shards.sample_ts_ms(src)
  np.testing.assert_array_equal(ts, table["sample_ts_ms"])
  assert np.all(np.diff(ts) >= 0)
  os.remove(os.path.join(out, "train", shards.TS_FILE))  # recomputed from the shards
  np.testing.assert_array_equal(shards.sample_ts_ms(src), ts)


def test_source_pickles_for_grain_workers(written):
  import pickle
  out, table = written
  src = pickle.loads(pickle.dumps(shards.open_samples(out, "train")))
  np.testing.assert_array_equal(src.__getitems__([3, 40])["lv_item"],
                                sample_table.take_rows(table, [3, 40])["lv_item"])


def test_info_records_counts_and_metadata(written):
  out, table = written
  info = shards.read_info(os.path.join(out, "train"))
  assert info["num_samples"] == N and info["schema_version"] == S.SCHEMA_VERSION
  assert sum(info["kind_counts"].values()) == N
  assert info["metadata"]["moment"]["mode"] == "realtime"


def test_other_schema_version_is_refused(written, tmp_path):
  out, table = written
  shards.write_samples(table, str(tmp_path), "eval", block_size=16)
  path = os.path.join(tmp_path, "eval", shards.INFO_FILE)
  with open(path) as f:
    info = json.load(f)
  info["schema_version"] = "0.9.0"
  with open(path, "w") as f:
    json.dump(info, f)
  with pytest.raises(ValueError, match="schema version '0.9.0'"):
    shards.open_samples(str(tmp_path), "eval")
  with pytest.raises(FileNotFoundError, match="no split 'test'"):
    shards.open_samples(str(tmp_path), "test")


def test_truncated_shard_error_names_the_file(written, tmp_path):
  out, table = written
  shards.write_samples(table, str(tmp_path), "train", num_shards=2, block_size=4)
  part = tmp_path / "train" / "part-00000"
  shard = sorted(f for f in os.listdir(part) if "array_record" in f)[-1]
  path = part / shard
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 3)
  with pytest.raises(ValueError, match=shard):
    shards.open_samples(str(tmp_path), "train")


def test_chunked_write_reads_back_as_one_split(written, tmp_path):
  _, table = written
  n = sample_table.num_rows(table)
  chunks = [sample_table.take_rows(table, np.arange(a, min(a + 17, n))) for a in range(0, n, 17)]
  shards.write_samples(iter(chunks), str(tmp_path), "train", block_size=4)
  src = shards.open_samples(str(tmp_path), "train")
  assert len(src) == n and len(src.info["parts"]) == len(chunks)
  idx = np.array([n - 1, 0, 16, 17, 33, 5])
  got, want = src.__getitems__(idx), sample_table.take_rows(table, idx)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  np.testing.assert_array_equal(shards.sample_ts_ms(src), table["sample_ts_ms"])


def test_failed_write_leaves_nothing(written, tmp_path, monkeypatch):
  out, table = written

  real_blocks = tfds_builder.table_blocks

  def failing_blocks(table, block_size):
    yield next(real_blocks(table, block_size))
    raise RuntimeError("disk full")

  monkeypatch.setattr(tfds_builder, "table_blocks", failing_blocks)
  with pytest.raises(RuntimeError, match="disk full"):
    shards.write_samples(table, str(tmp_path), "train", block_size=8)
  assert os.listdir(tmp_path) == []


def test_overwrite_and_bad_tables(written, tmp_path):
  out, table = written
  shards.write_samples(table, str(tmp_path), "train", block_size=8)
  with pytest.raises(FileExistsError):
    shards.write_samples(table, str(tmp_path), "train")
  small = sample_table.take_rows(table, np.arange(5))
  shards.write_samples(small, str(tmp_path), "train", overwrite=True)
  assert len(shards.open_samples(str(tmp_path), "train")) == 5
  assert sorted(os.listdir(tmp_path)) == ["train"]
  bad = dict(table, sample_ts_ms=table["sample_ts_ms"][::-1])
  with pytest.raises(ValueError, match="sorted by sample_ts_ms"):
    shards.write_samples(bad, str(tmp_path), "x")
  bad = dict(table, sv_tag=table["sv_tag"][:-1])
  with pytest.raises(ValueError, match="sv_tag"):
    shards.write_samples(bad, str(tmp_path), "x")


def test_ensure_samples_builds_once_per_config(tmp_path):
  import shutil

  from mcjax.samples import build as build_samples
  from mcjax.moment import MomentConfig

  example = os.path.join(os.path.dirname(__file__), "..", "data", "example")
  log = tmp_path / "log"
  shutil.copytree(example, log)
  root = str(tmp_path / "cache")
  path = build_samples.ensure_samples(str(log), root, MomentConfig())
  built = os.path.getmtime(os.path.join(path, build_samples.BUILD_INFO))
  assert build_samples.ensure_samples(str(log), root, MomentConfig()) == path
  assert os.path.getmtime(os.path.join(path, build_samples.BUILD_INFO)) == built  # not rebuilt
  assert os.path.basename(path).startswith("realtime-")
  info = json.load(open(os.path.join(path, build_samples.BUILD_INFO)))
  n_live = info["stats"]["live_exposures"]
  assert len(shards.open_samples(path, "eval")) == n_live > 0
  other = build_samples.ensure_samples(str(log), root, MomentConfig(window_s=10.0))
  assert other != path
  assert sorted(os.listdir(root)) == sorted([os.path.basename(path), os.path.basename(other)])
  assert "samples/s" in build_samples.format_report(info)


def test_corrupt_record_error_names_the_shard_and_record(written, tmp_path):
  out, table = written
  shards.write_samples(table, str(tmp_path), "train", num_shards=1, block_size=4)
  part = tmp_path / "train" / "part-00000"
  shard = next(f for f in os.listdir(part) if "array_record" in f)
  path = part / shard
  data = bytearray(path.read_bytes())
  for i in range(200, 260):  # inside the first records' compressed bytes; the size is kept
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=rf"{shard}: crc32 .* checksums.json says"):
    shards.open_samples(str(tmp_path), "train")  # the checksums name the file at open
  src = shards.open_samples(str(tmp_path), "train", verify=False)  # as a worker's copy
  with pytest.raises(ValueError, match=rf"corrupt sample shard .*{shard}: record \d+"):
    src.__getitems__(np.arange(len(src)))
