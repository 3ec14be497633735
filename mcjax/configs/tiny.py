"""tiny: the `small` world with a very small model and few, large windows, for trainer tests.

Command:  python -m launch.train --config=mcjax/configs/tiny.py --workdir=runs/tiny
Hardware: any CPU; well under a minute.
Expected: finishes and writes metrics.json; the numbers are not meaningful at this size.
Small tables (a few thousand rows) keep steps cheap; ``large_table_rows`` is low enough that
the user and item tables are still row-sharded on a mesh's "model" axis. One shared expert and
no separate recent-live attention keep the train step's compile time (what the trainer tests
mostly wait for) low.
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "tiny"
  c.data.preset = "small"
  c.moment.sv_hist_len = 8
  c.moment.lv_hist_len = 4

  m = c.model
  m.d_model = 8
  m.embedding.dim = 8
  m.embedding.large_table_rows = 1024
  m.embedding.vocab.update({"user": 2048, "user_side": 256, "live_item": 2048,
                            "live_author": 1024, "live_side": 512, "sv_item": 4096,
                            "sv_author": 1024, "sv_side": 512})
  m.gsu.top_k = 4
  m.esu.recent_n = 0
  m.crowd.hidden = (16,)
  m.towers.shared_experts = 1
  m.towers.task_experts = 0
  m.towers.expert_hidden = (16,)
  m.towers.expert_dim = 16
  m.towers.head_hidden = (8,)

  c.train.batch_size = 64
  c.train.eval_batch_size = 256
  c.train.window_min = 360.0
  c.train.checkpoint_every_steps = 20
  c.train.log_every_steps = 10
  return c
