"""Bad configs are refused before any device work, with a message naming the key: by the
train launcher (unknown keys, a mesh the devices cannot form), by ``check_layout`` (a batch
the data axis cannot split) and by ``mcjax.config.validate``."""

import os
import subprocess
import sys

import pytest
import trainer_fixtures as fx

from mcjax import config as mcconfig
from mcjax.train import loop
from mcjax.sim import config as sim_config
from mcjax.runtime import mesh as mesh_lib


def _launch(tmp_path, *flags):
  work = tmp_path / "work"
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  r = subprocess.run([sys.executable, "-m", "launch.train", f"--config={fx.TINY}",
                      f"--workdir={work}", *flags], cwd=fx.REPO, env=env,
                     capture_output=True, text=True, timeout=120)
  assert not work.exists()  # refused before touching the workdir (no data, no devices)
  return r


@pytest.mark.parametrize("flags, message", [
    (("--config.train.nope=1",), "--config.train.nope"),
    (("--config.mesh.shape=(3,1)",), "config.mesh.shape"),
    (("--config.train.window_min=0",), "config.train.window_min"),
])
def test_launcher_refuses_bad_configs(tmp_path, flags, message):
  r = _launch(tmp_path, *flags)
  assert r.returncode != 0
  assert message in r.stderr, r.stderr
  assert "Traceback" not in r.stderr, r.stderr


def test_batch_must_split_over_the_data_axis():
  cfg = fx.tiny_config()
  cfg.mesh.shape = (8, 1)
  assert mesh_lib.check_layout(cfg) == (8, 1)
  cfg.train.batch_size = 60
  with pytest.raises(ValueError, match=r"config\.train\.batch_size=60"):
    mesh_lib.check_layout(cfg)
  cfg.train.batch_size, cfg.train.eval_batch_size = 64, 100
  with pytest.raises(ValueError, match=r"config\.train\.eval_batch_size=100"):
    mesh_lib.check_layout(cfg)
  cfg.train.eval_batch_size, cfg.mesh.shape = 256, (3, -1)
  with pytest.raises(ValueError, match=r"config\.mesh\.shape"):
    mesh_lib.check_layout(cfg)


@pytest.mark.parametrize("key, value, message", [
    ("train.mode", "bogus", "config.train.mode"),
    ("train.window_min", 0.0, "config.train.window_min"),
    ("train.window_min", -5.0, "config.train.window_min"),
    ("train.batch_size", 0, "config.train.batch_size"),
    ("train.checkpoint_every_steps", 0, "config.train.checkpoint_every_steps"),
    ("train.offline_split", 1.0, "config.train.offline_split"),
    ("mesh.shape", (8,), "config.mesh.shape"),
    ("data.preset", "huge", "config.data.preset"),
    ("moment.window_s", 0.0, "window_s"),
    ("model.gsu.top_k", 0, "model.gsu.top_k"),
    ("train.learning_rate", -1.0, "config.train.learning_rate"),
    ("train.learning_rate", 0.0, "config.train.learning_rate"),
    ("train.learning_rate", float("nan"), "config.train.learning_rate"),
    ("train.learning_rate", float("inf"), "config.train.learning_rate"),
    ("train.embedding_learning_rate", 0.0, "config.train.embedding_learning_rate"),
    ("train.weight_decay", -1e-4, "config.train.weight_decay"),
    ("train.grad_clip", -1.0, "config.train.grad_clip"),
    ("train.grad_clip", float("nan"), "config.train.grad_clip"),
    ("train.window_min", float("inf"), "config.train.window_min"),
    ("train.max_steps", -2, "config.train.max_steps"),
    ("train.epochs", 0, "config.train.epochs"),
    ("train.epochs", 2, "config.train.epochs"),  # online makes one pass
    ("train.offline_split_ts_ms", -1, "config.train.offline_split_ts_ms"),
    ("train.select_metric", "ctr/f1", "config.train.select_metric"),
    ("train.select_metric", "click/auc", "config.train.select_metric"),
    ("mesh.max_replicated_mb", -1.0, "config.mesh.max_replicated_mb"),
])
def test_validate_names_the_key(key, value, message):
  cfg = fx.tiny_config()
  mcconfig.validate(cfg)
  parent, leaf = key.rsplit(".", 1)
  node = cfg
  for part in parent.split("."):
    node = node[part]
  node[leaf] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    mcconfig.validate(cfg)


def test_validate_accepts_every_world_preset():
  cfg = fx.tiny_config()
  cfg.data.log_dir = ""
  for preset in sim_config.PRESETS:
    cfg.data.preset = preset
    mcconfig.validate(cfg)


@pytest.mark.parametrize("changes", [
    {"mode": "offline", "epochs": 3},
    {"mode": "offline_tvt", "epochs": 2, "valid_split": 0.6, "offline_split": 0.8,
     "select_metric": "ctr/logloss"},
    {"mode": "offline_tvt", "valid_split_ts_ms": 5, "offline_split_ts_ms": 9},
    {"mode": "offline", "offline_split_ts_ms": 1_746_100_000_000},
])
def test_validate_accepts_offline_protocols(changes):
  cfg = fx.tiny_config()
  cfg.train.update(changes)
  mcconfig.validate(cfg)


@pytest.mark.parametrize("changes, message", [
    ({"mode": "offline_tvt", "valid_split": 0.8, "offline_split": 0.8}, "valid_split"),
    ({"mode": "offline_tvt", "valid_split_ts_ms": 9, "offline_split_ts_ms": 5},
     "valid_split_ts_ms"),
])
def test_validate_refuses_validation_after_test(changes, message):
  cfg = fx.tiny_config()
  cfg.train.update(changes)
  with pytest.raises(ValueError, match=rf"config\.train\.{message} must be <"):
    mcconfig.validate(cfg)


def test_train_and_evaluate_validates_before_building_data(tmp_path):
  cfg = fx.tiny_config()
  cfg.train.mode = "bogus"
  with pytest.raises(ValueError, match=r"config\.train\.mode"):
    loop.train_and_evaluate(cfg, str(tmp_path / "work"), str(tmp_path / "samples"))
  assert not (tmp_path / "work").exists()


def test_config_imports_no_data_stack():
  # a training-only machine (a GPU box) needs no pyarrow / tfds / grain to load configs
  code = ("import sys, mcjax.config; "
          "print(sorted(m for m in ('pyarrow', 'tensorflow_datasets', 'grain') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_ablations_change_one_thing_each():
  """no_moment isolates the sample stream, no_crowd the crowd features; baseline drops both
  and Cross (the split of Moment into its two parts relies on it)."""
  from mcjax.config import default_config, load_config
  full = default_config().to_dict()

  def diff(name):
    cfg = load_config(name).to_dict()
    flat = lambda d, p="": {k2: v2 for k, v in d.items() for k2, v2 in (  # noqa: E731
        flat(v, f"{p}{k}.").items() if isinstance(v, dict) else [(f"{p}{k}", v)])}
    a, b = flat(full), flat(cfg)
    return {k: b[k] for k in b if a.get(k) != b[k] and k != "name"}

  assert diff("no_moment") == {"moment.mode": "on_close"}
  assert diff("no_crowd") == {"model.use_crowd": False}
  assert diff("baseline") == {"moment.mode": "on_close", "model.use_crowd": False,
                              "model.use_sv_history": False, "loss.contrastive_weight": 0.0}


def test_leaky_feature_time_is_refused_for_training():
  from mcjax.config import default_config, validate
  cfg = default_config()
  cfg.moment.features_at = "sample"
  with pytest.raises(ValueError, match="config.moment.features_at"):
    validate(cfg)
