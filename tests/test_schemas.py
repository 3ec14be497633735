import numpy as np
import pyarrow as pa

from mcjax.eventlog import schema as ev
from mcjax.contract import schema as ss


def test_event_schema_declares_the_contract_columns():
  assert ev.EVENT_SCHEMA.names == [
      "ts_ms", "user_id", "exposure_id", "domain", "item_id", "author_id", "event", "value"]
  assert ev.EVENT_SCHEMA.field("ts_ms").type == pa.int64()
  for domain, events in ev.DOMAIN_EVENTS.items():
    assert domain in ev.DOMAINS and events <= set(ev.EVENTS)


def test_pad_sequences_pads_truncates_and_reports_lengths():
  batch = {"user_id": [1, 2], "sv_item": [np.arange(5), np.arange(1)],
           "lv_item": [np.arange(0), np.arange(3)]}
  out = ss.pad_sequences(batch, sv_len=3, lv_len=2)
  np.testing.assert_array_equal(out["sv_item"], [[0, 1, 2], [0, 0, 0]])
  np.testing.assert_array_equal(out["sv_len"], [3, 1])
  np.testing.assert_array_equal(out["lv_len"], [0, 2])
  assert out["sv_item"].dtype == np.int64


def test_dummy_batch_matches_schema_shapes():
  b = ss.dummy_batch(4, sv_len=7, lv_len=3)
  assert b["crowd"].shape == (4, len(ss.CROWD_FEATURES))
  assert b["labels"].shape == (4, len(ss.TASKS))
  assert b["sv_author"].shape == (4, 7) and b["lv_watch_s"].shape == (4, 3)
