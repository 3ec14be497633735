"""dlrm: a DLRM-shaped mcjax config: ids and side features -> embeddings -> MLP towers; no
histories (no GSU/ESU), no contrastive loss, crowd features as the dense input.

Command:  python -m launch.bench --config=mcjax/configs/dlrm.py --mode=step \
              --config.train.batch_size=1024
          (throughput; it trains like any config:
          python -m launch.train --config=mcjax/configs/dlrm.py --workdir=runs/dlrm)
Hardware: any; sized for a 2-core CPU.
Expected: 48,465 examples/s at batch 1024 on the 2-core CPU, 9.56x DeepCTR-Torch DIN
          (benchmarks/RESULTS.md, "mcjax vs DeepCTR-Torch DIN").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "dlrm"
  c.model.use_sv_history = False
  c.model.use_lv_history = False
  c.loss.contrastive_weight = 0.0
  c.moment.sv_hist_len = 0
  c.moment.lv_hist_len = 0
  return c
