"""Checksums: history stores and sample splits carry a crc32 manifest written at save and
checked on open; a changed, truncated or missing file is named."""

import os
import pickle

import pytest

from mcjax.eventlog import files
from mcjax.contract import history_store as H
from mcjax.samples import shards
from mcjax.samples import table as sample_table


def _flip(path, at=-3):
  """Flips one byte of a file, keeping its size."""
  data = bytearray(open(path, "rb").read())
  data[at] ^= 0xFF
  open(path, "wb").write(bytes(data))


@pytest.fixture
def stores(tmp_path):
  table = sample_table.random_sample_table(20, max_sv=6, max_lv=3, seed=5)
  _, stores = H.store_table(table)
  for p, store in stores.items():
    store.save(str(tmp_path / p))
  return tmp_path


def test_history_store_manifest_is_written_and_checked(stores):
  assert os.path.isfile(stores / "sv" / files.MANIFEST)
  H.HistoryStore.load(str(stores / "sv"), "sv")
  path = stores / "sv" / "sv_item.npy"
  _flip(path)
  with pytest.raises(files.CorruptFileError, match=rf"^{path}: crc32 [0-9a-f]{{8}}, "
                     r"checksums.json says [0-9a-f]{8}: the sv history store is corrupt"):
    H.HistoryStore.load(str(stores / "sv"), "sv")
  assert len(H.HistoryStore.load(str(stores / "sv"), "sv", verify=False)) > 0


def test_truncated_or_missing_history_file_or_manifest_is_named(stores):
  path = stores / "lv" / "action_ts.npy"
  open(path, "r+b").truncate(os.path.getsize(path) - 8)
  with pytest.raises(files.CorruptFileError, match=rf"{path}: \d+ bytes, checksums.json says "
                     r"\d+: the lv history store is truncated"):
    H.HistoryStore.load(str(stores / "lv"), "lv")
  os.remove(path)
  with pytest.raises(files.CorruptFileError, match=rf"{path}: missing file of the lv history"):
    H.HistoryStore.load(str(stores / "lv"), "lv")
  os.remove(stores / "sv" / files.MANIFEST)
  with pytest.raises(files.CorruptFileError, match="missing checksum manifest of the sv "
                     "history store"):
    H.HistoryStore.load(str(stores / "sv"), "sv")


@pytest.fixture
def split(tmp_path):
  table = sample_table.random_sample_table(40, max_sv=6, max_lv=3, seed=6)
  shards.write_samples(table, str(tmp_path), "train", num_shards=1, block_size=8)
  return tmp_path / "train"


@pytest.mark.parametrize("target", ["shard", "sample_ts_ms.npy", "history/lv/lv_item.npy",
                                    "part-00000/dataset_info.json"])
def test_a_corrupt_sample_file_is_named_when_the_split_is_opened(split, target):
  if target == "shard":
    target = next(f"part-00000/{f}" for f in os.listdir(split / "part-00000")
                  if "array_record" in f)
  path = split / target
  _flip(path, at=len(open(path, "rb").read()) // 2)
  with pytest.raises(files.CorruptFileError, match=rf"^{path}: crc32 .* is corrupt: rebuild"):
    shards.open_samples(str(split.parent), "train")


def test_split_manifest_lists_every_file_but_the_history_stores(split):
  listed = set(__import__("json").load(open(split / files.MANIFEST))["files"])
  assert "sample_ts_ms.npy" in listed and "samples_info.json" in listed
  assert any(f.startswith("part-00000/") and "array_record" in f for f in listed)
  assert not any(f.startswith("history/") for f in listed)


def test_worker_copies_do_not_check_again(split):
  src = shards.open_samples(str(split.parent), "train")
  _flip(split / "sample_ts_ms.npy")  # corrupted after the open: the parent already checked
  copy = pickle.loads(pickle.dumps(src))
  assert len(copy) == 40
  with pytest.raises(files.CorruptFileError):
    shards.open_samples(str(split.parent), "train")
