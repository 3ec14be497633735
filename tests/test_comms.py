"""benchmarks.comms: the HLO collective parser, the growth check, and the --quick run (its
own 8 fake devices in a subprocess; compile only, never a speed)."""

import json
import os
import subprocess
import sys

from benchmarks import comms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HLO = """
ENTRY %main {
  %all-reduce.1 = (f32[512,32]{1,0}, f32[512,64,32]{2,1,0}) all-reduce(%a, %b), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, use_global_device_ids=true, to_apply=%add, metadata={op_name="jit(train_step)/gather"}
  %all-gather.2 = s32[1024]{0} all-gather(%c), channel_id=2, replica_groups=[4,2]<=[8], dimensions={0}, metadata={op_name="jit(train_step)/sort"}
  %all-to-all.3 = (f32[16,1,16]{2,1,0}, f32[16,1,16]{2,1,0}) all-to-all(%d, %e), channel_id=3, replica_groups={{0,1,2,3},{4,5,6,7}}
  %collective-permute.4 = f32[512]{0} collective-permute(%f), channel_id=4, source_target_pairs={{0,0},{1,2},{2,1}}
  %collective-permute.5 = f32[512]{0} collective-permute(%g), channel_id=5, source_target_pairs={{0,0},{1,1}}
  ROOT %all-reduce.6 = f32[8]{0} all-reduce(%h), replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0','axis_2'}, to_apply=%add
}
"""


def test_parse_collectives_bytes_and_groups():
  got = comms.parse_collectives(HLO, num_devices=8)
  assert [c["kind"] for c in got] == ["all-reduce", "all-gather", "all-to-all",
                                      "collective-permute", "collective-permute",
                                      "all-reduce"]
  ar = got[0]
  assert ar["payload_bytes"] == 4 * (512 * 32 + 512 * 64 * 32) and ar["group"] == 4
  assert ar["wire_bytes"] == int(2 * 3 / 4 * ar["payload_bytes"])
  assert ar["op"] == "jit(train_step)/gather"
  assert got[1]["group"] == 2 and got[1]["wire_bytes"] == 4 * 1024 // 2
  assert got[2]["group"] == 4 and got[2]["payload_bytes"] == 2 * 4 * 256
  assert got[3]["wire_bytes"] == 4 * 512 and got[4]["wire_bytes"] == 0  # self-pairs only
  assert got[5]["group"] == 8
  summary = comms.summarize(got)
  assert summary["largest"] is ar
  assert summary["by_kind"]["collective-permute"]["count"] == 2


def _record(layout, rows, all_reduce):
  by_kind = {k: {"count": 1, "payload_bytes": 0, "wire_bytes": 0} for k in comms.KINDS}
  by_kind["all-reduce"]["payload_bytes"] = all_reduce
  return {"layout": layout, "rows": rows, "summary": {"by_kind": by_kind}}


def test_growth_check_flags_bytes_that_grow_with_rows():
  flat = [_record("2x4", 10**5, 1_000_000), _record("2x4", 10**7, 1_005_000)]
  assert comms.growth_failures(flat) == []  # within 1% + 4 KiB
  grows = flat + [_record("2x4", 10**8, 3_000_000), _record("8x1", 10**5, 5)]
  (failure,) = comms.growth_failures(grows)
  assert failure.startswith("all-reduce on 2x4") and "1e+08" in failure


def test_comms_quick_runs_and_passes(tmp_path):
  out = tmp_path / "comms.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-m", "benchmarks.comms", "--quick",
                         f"--json_out={out}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "comms: OK" in proc.stdout
  records = json.loads(out.read_text())["records"]
  assert [(r["layout"], r["rows"]) for r in records] == [("2x4", 10**5), ("2x4", 10**6)]
  for r in records:
    assert r["summary"]["by_kind"]["all-reduce"]["payload_bytes"] > 0
    assert r["cost"]["flops"] > 0 and r["collectives"]
