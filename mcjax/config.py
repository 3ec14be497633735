"""The experiment config: one tree, composed of each part's own section.

``default_config()`` is the `full` Moment&Cross setup on the default simulated world. Named
configs in ``experiments/configs/`` start from it and change a few fields; launchers override
any leaf with ``--config.a.b=v``. ``validate(cfg)`` checks the whole tree before anything
touches a device, and names the offending key.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from mcjax import losses
from mcjax.model import config as model_config
from mcjax.moment.config import MomentConfig
from mcjax.sim import config as sim_config

MODES = ("online", "offline")

# The named configs of the repository (experiments/configs/<name>.py, each with get_config()).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "experiments", "configs")


def load_named(name: str, config_dir: str = CONFIG_DIR) -> ml_collections.ConfigDict:
  """``get_config()`` of ``<config_dir>/<name>.py``; ValueError listing the known names."""
  path = os.path.join(config_dir, f"{name}.py")
  if not os.path.exists(path):
    known = sorted(f[:-3] for f in os.listdir(config_dir) if f.endswith(".py"))
    raise ValueError(f"no config named {name!r}; known: {known}")
  spec = importlib.util.spec_from_file_location(f"mcjax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def moment_section() -> ml_collections.ConfigDict:
  """The Moment engine section; its keys are the fields of ``MomentConfig``."""
  return ml_collections.ConfigDict(
      {k: v for k, v in MomentConfig().__dict__.items()})


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "full"
  c.seed = 0                      # model init and shuffling seed

  c.data = ml_collections.ConfigDict()
  c.data.log_dir = ""             # event-log folder; "" = the simulated world below
  c.data.preset = "default"       # simulated world preset when log_dir is ""
  c.data.world_seed = 0           # simulated world seed when log_dir is ""

  c.moment = moment_section()     # sample engine: mode, windows, first-only, history lengths
  c.moment.sv_hist_len = 64       # sized for a 2-core CPU run (the engine allows 10,000)
  c.moment.lv_hist_len = 32
  c.model = model_config.default()
  c.loss = losses.loss_config()

  c.train = ml_collections.ConfigDict()
  c.train.mode = "online"         # "online": prequential windows; "offline": time split
  c.train.window_min = 10.0       # online: evaluation window length (simulated minutes)
  c.train.offline_split = 0.8     # offline: train on the first share of time, eval on the rest
  c.train.batch_size = 256
  c.train.eval_batch_size = 1024
  c.train.shuffle_within_window = True
  c.train.learning_rate = 1e-3    # AdamW for dense parameters
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.embedding_learning_rate = 0.05   # row-wise Adagrad for embedding tables
  c.train.checkpoint_every_steps = 500
  c.train.log_every_steps = 50
  c.train.max_steps = -1          # -1 = until the data ends; later windows are still scored,
  #                                  and a rerun with a larger value continues
  c.train.live_sparse_threshold = 5

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)          # (data, model); -1 = the rest of the devices
  c.mesh.max_replicated_mb = 64.0  # a parameter larger than this may not be replicated
  #                                  on a multi-device mesh (put devices on "model")
  return c


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key when the config is impossible."""
  if cfg.train.mode not in MODES:
    raise ValueError(f"config.train.mode must be one of {MODES}, got {cfg.train.mode!r}")
  for key in ("batch_size", "eval_batch_size", "checkpoint_every_steps", "log_every_steps"):
    if int(cfg.train[key]) <= 0:
      raise ValueError(f"config.train.{key} must be > 0, got {cfg.train[key]}")
  if cfg.train.window_min <= 0:
    raise ValueError(f"config.train.window_min must be > 0, got {cfg.train.window_min}")
  if not 0.0 < cfg.train.offline_split < 1.0:
    raise ValueError(f"config.train.offline_split must be in (0, 1), got {cfg.train.offline_split}")
  if len(tuple(cfg.mesh.shape)) != 2:
    raise ValueError(f"config.mesh.shape must have 2 entries (data, model), got {cfg.mesh.shape}")
  if not cfg.data.log_dir and cfg.data.preset not in sim_config.PRESETS:
    raise ValueError(f"config.data.preset must be one of {sorted(sim_config.PRESETS)}, "
                     f"got {cfg.data.preset!r}")
  MomentConfig(**cfg.moment.to_dict()).validate()
  if cfg.moment.features_at != "exposure":
    raise ValueError(
        f"config.moment.features_at={cfg.moment.features_at!r}: training needs 'exposure' (the "
        "request-time view); other query times break train = serve (build such samples with "
        "launch.build_samples for leakage studies only)")
  model_config.validate(cfg.model)
  losses.validate(cfg.loss)


def moment_config(cfg: ml_collections.ConfigDict) -> MomentConfig:
  return MomentConfig(**cfg.moment.to_dict())
