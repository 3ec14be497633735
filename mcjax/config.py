"""The experiment config: one tree, composed of each part's own section.

``default_config()`` is the `full` Moment&Cross setup on the default simulated world. Named
configs in the package ``mcjax.configs`` start from it and change a few fields;
``load_config(name)`` loads one (a name or a ``.py`` path), and every launcher overrides any
leaf with ``--config.a.b=v``. ``validate(cfg)`` checks the whole tree before anything
touches a device, and names the offending key.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import os
import re

import ml_collections

from mcjax import configs
from mcjax import loss_config
from mcjax.model import config as model_config
from mcjax.moment.config import MomentConfig
from mcjax.contract.schema import TASKS
from mcjax.sim import config as sim_config

# train.mode: the time plans of ``mcjax.train.plan``.
TRAIN_MODES = ("online", "offline", "offline_tvt")
# mesh.embedding_exchange: how large tables are looked up and updated (mcjax.runtime.exchange).
EXCHANGE_MODES = ("gspmd", "all_to_all")


def load_config(name: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """A fresh ``get_config()`` of a named config (``"smoke"``: ``mcjax/configs/smoke.py``) or
  of a config file (a path ending in ``.py``), with ``overrides`` (see ``apply_overrides``)
  set; ValueError listing the known names, or naming an unknown key."""
  path = name if name.endswith(".py") else configs.path(name)
  if not os.path.exists(path):
    raise ValueError(f"no config file {path!r}; known names: {configs.names()}")
  spec = importlib.util.spec_from_file_location(
      f"mcjax_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return apply_overrides(module.get_config(), overrides or {})


def moment_section() -> ml_collections.ConfigDict:
  """The Moment engine section; its keys are the fields of ``MomentConfig``."""
  return ml_collections.ConfigDict(
      {k: v for k, v in MomentConfig().__dict__.items()})


# `full`'s defaults before the lever study (experiments/levers/RESULTS.md) chose the values
# default_config now has; a study measured before that change reproduces with these overrides
# (its RESULTS file says so), and the lever study's `base` is `full` with them.
BEFORE_LEVERS = {"moment.sv_hist_len": 64, "model.gsu.approx": "off",
                 "model.match_set": "counts", "train.embedding_initial_accumulator": 0.0,
                 "model.crowd.drop": (), "train.learning_rate": 1e-3}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "full"                 # the config's name (metrics.json, reports)
  c.seed = 0                      # model init and shuffling seed

  c.data = ml_collections.ConfigDict()
  c.data.log_dir = ""             # event-log folder; "" = the simulated world below
  c.data.preset = "default"       # simulated world preset when log_dir is ""
  c.data.world_seed = 0           # simulated world seed when log_dir is ""

  c.moment = moment_section()     # sample engine: mode, windows, first-only, history lengths
  c.moment.sv_hist_len = 256      # chosen on validation (experiments/levers: 64 -> 256 with
  #                                  model.gsu.approx=simhash); the engine allows 10,000
  c.moment.lv_hist_len = 32
  c.model = model_config.default()
  c.loss = loss_config.loss_config()

  c.train = ml_collections.ConfigDict()
  c.train.mode = "online"         # "online": prequential windows; "offline": train, then test
  #                                  after a time split; "offline_tvt": train / valid / test by
  #                                  time, the checkpoint chosen on valid (see mcjax.train.plan)
  c.train.window_min = 10.0       # online: evaluation window length (simulated minutes)
  c.train.offline_split = 0.8     # offline modes: test on the last 1 - share of the time span
  c.train.offline_split_ts_ms = 0  # ... or from this absolute time (ms); 0 = the share above
  c.train.valid_split = 0.7       # offline_tvt: validate from this share of the time span (to
  #                                  the test boundary) and train before it
  c.train.valid_split_ts_ms = 0   # ... or from this absolute time (ms); 0 = the share above
  c.train.select_metric = "ctr/auc"  # offline_tvt: "<task>/<auc|gauc|uauc|logloss>" on valid
  #                                  picks the checkpoint that scores the test (logloss: lowest)
  c.train.epochs = 1              # passes over the training samples (offline modes only)
  c.train.batch_size = 256        # global training batch (split over the mesh's "data" axis)
  c.train.eval_batch_size = 1024  # global batch when scoring evaluation records
  c.train.shuffle_within_window = True  # shuffle each window's training samples (storage-aware)
  c.train.learning_rate = 2e-3    # AdamW for dense parameters (chosen on validation and kept on
  #                                  fresh seeds with model.crowd.drop, experiments/levers)
  c.train.warmup_steps = 0        # the dense learning rate rises linearly from 0 over these
  #                                  steps (0 = constant from the first step)
  c.train.weight_decay = 0.0      # AdamW weight decay of the dense parameters
  c.train.grad_clip = 1.0         # global-norm clip of the dense gradients; 0 = no clipping
  c.train.embedding_learning_rate = 0.05   # row-wise Adagrad for embedding tables
  c.train.embedding_initial_accumulator = 1e-4  # Adagrad's accumulator at start (chosen on
  #                                  validation, experiments/levers); 0 makes a rarely seen
  #                                  row's first update lr * g / |g| whatever g's size
  c.train.checkpoint_every_steps = 500  # training steps between checkpoints
  c.train.log_every_steps = 50   # steps between step-metric log lines
  c.train.max_steps = -1          # -1 = until the data ends; later windows are still scored,
  #                                  and a rerun with a larger value continues
  c.train.live_sparse_threshold = 5  # metrics slice: users with fewer live-history items

  # The real-time loop (launch.realtime, mcjax.train.continuous, mcjax.train.realtime).
  c.realtime = ml_collections.ConfigDict()
  c.realtime.max_wait_ms = 1000.0    # a part-filled batch is trained this much event time later
  c.realtime.publish_every_s = 10.0  # a parameter version is published this often (wall s)
  c.realtime.publish_every_steps = 0  # ... and every this many steps (0: by time only)
  c.realtime.tick_ms = 1000          # replay: event time the engine emits at once
  c.realtime.speed = 0.0             # replay: logged seconds per wall second (0: no pacing)
  c.realtime.request_rate = 0.0      # scoring requests per wall second while training (0: none)
  c.realtime.request_candidates = 32  # lives on air scored per request (at most)
  c.realtime.publish_delta = True    # --publish_dir: a version as its changed table rows + dense
  c.realtime.full_every = 10         # --publish_dir with publish_delta: a whole version this often

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)          # (data, model); -1 = the rest of the devices
  c.mesh.max_replicated_mb = 64.0  # a parameter larger than this may not be replicated
  #                                  on a multi-device mesh (put devices on "model")
  # Sharding policy (mcjax.runtime.partition): ordered (regex on the parameter path, partition
  # as a tuple of mesh axes) pairs, the first match wins; then each logical axis the model
  # names on a parameter -> a mesh axis ("data", "model") or None (replicated).
  c.mesh.rules = ()               # e.g. ((r"towers/.*/kernel", (None, "model")),)
  c.mesh.logical_rules = model_config.LOGICAL_RULES  # logical axis -> mesh axis or None
  c.mesh.embedding_exchange = "gspmd"  # "gspmd": large tables row-sharded on "model", lookups
  #                                  and updates partitioned by XLA; "all_to_all": rows over
  #                                  every device, ids and rows exchanged with their owners
  #                                  (mcjax.runtime.exchange; rows divisible by the devices)
  c.mesh.exchange_capacity = 2.0  # all_to_all: ids one device sends one owner per step, in
  #                                  even shares (plus a margin); more are refused at that step
  return c


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key when the config is impossible."""
  t = cfg.train
  if t.mode not in TRAIN_MODES:
    raise ValueError(f"config.train.mode must be one of {TRAIN_MODES}, got {t.mode!r}")
  for key in ("batch_size", "eval_batch_size", "checkpoint_every_steps", "log_every_steps",
              "epochs"):
    _require(t, key, _is_int(t[key]) and t[key] > 0, "an int > 0")
  _require(t, "max_steps", _is_int(t.max_steps) and t.max_steps >= -1, "an int >= -1")
  _require(t, "warmup_steps", _is_int(t.get("warmup_steps", 0)) and t.get("warmup_steps", 0) >= 0,
           "an int >= 0")
  _require(t, "live_sparse_threshold", _is_int(t.live_sparse_threshold)
           and t.live_sparse_threshold >= 0, "an int >= 0")
  for key, low, want in (("learning_rate", 0.0, "> 0"), ("embedding_learning_rate", 0.0, "> 0"),
                         ("window_min", 0.0, "> 0"), ("weight_decay", None, ">= 0"),
                         ("grad_clip", None, ">= 0 (0 = no clipping)"),
                         ("embedding_initial_accumulator", None, ">= 0")):
    x = t[key]
    ok = _is_number(x) and math.isfinite(x) and (x > low if low is not None else x >= 0)
    _require(t, key, ok, f"a finite number {want}")
  for key in ("offline_split", "valid_split"):
    _require(t, key, _is_number(t[key]) and 0.0 < t[key] < 1.0, "in (0, 1)")
  for key in ("offline_split_ts_ms", "valid_split_ts_ms"):
    _require(t, key, _is_int(t[key]) and t[key] >= 0, "an int >= 0 (0 = use the share)")
  if t.mode == "offline_tvt" and not (t.valid_split_ts_ms or t.offline_split_ts_ms):
    _require(t, "valid_split", t.valid_split < t.offline_split,
             f"< config.train.offline_split={t.offline_split} (validation comes before test)")
  if t.mode == "offline_tvt" and t.valid_split_ts_ms and t.offline_split_ts_ms:
    _require(t, "valid_split_ts_ms", t.valid_split_ts_ms < t.offline_split_ts_ms,
             f"< config.train.offline_split_ts_ms={t.offline_split_ts_ms}")
  task, _, metric = str(t.select_metric).partition("/")
  _require(t, "select_metric", task in TASKS and metric in SELECT_METRICS,
           f"'<task>/<metric>' with a task of {TASKS} and a metric of {SELECT_METRICS}")
  if t.mode == "online" and t.epochs != 1:
    _require(t, "epochs", False, "1 in online mode (prequential: one pass, each window scored "
             "before it is trained on); use train.mode='offline' or 'offline_tvt'")
  if len(tuple(cfg.mesh.shape)) != 2:
    raise ValueError(f"config.mesh.shape must have 2 entries (data, model), got {cfg.mesh.shape}")
  _require(cfg.mesh, "max_replicated_mb", _is_number(cfg.mesh.max_replicated_mb)
           and cfg.mesh.max_replicated_mb >= 0, "a number >= 0", where="mesh")
  _require(cfg.mesh, "embedding_exchange", cfg.mesh.embedding_exchange in EXCHANGE_MODES,
           f"one of {EXCHANGE_MODES}", where="mesh")
  _require(cfg.mesh, "exchange_capacity", _is_number(cfg.mesh.exchange_capacity)
           and math.isfinite(cfg.mesh.exchange_capacity) and cfg.mesh.exchange_capacity >= 1,
           "a finite number >= 1", where="mesh")
  _validate_sharding(cfg.mesh)
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
  loss_config.validate(cfg.loss)
  block = cfg.loss.get("contrastive_block", 0)
  for key in ("batch_size", "eval_batch_size"):
    if block and cfg.train[key] % block:
      raise ValueError(f"config.loss.contrastive_block={block} must divide "
                       f"config.train.{key}={cfg.train[key]}")
  if "realtime" in cfg:
    r = cfg.realtime
    _require(r, "full_every", _is_int(r.full_every) and r.full_every >= 1, "an int >= 1",
             where="realtime")


def _validate_sharding(mesh) -> None:
  axes = ("data", "model", None)
  for i, rule in enumerate(mesh.rules):
    ok = len(rule) == 2 and isinstance(rule[0], str) and all(a in axes for a in rule[1])
    if ok:
      try:
        re.compile(rule[0])
      except re.error:
        ok = False
    if not ok:
      raise ValueError(f"config.mesh.rules[{i}] must be (regex, tuple of {axes}), got {rule!r}")
  table = dict(mesh.logical_rules)
  missing = [a for a in model_config.LOGICAL_AXES if a not in table]
  if missing or any(a not in axes for a in table.values()):
    raise ValueError(f"config.mesh.logical_rules must map each of {model_config.LOGICAL_AXES} "
                     f"to one of {axes}, got {mesh.logical_rules!r}")


# offline_tvt's checkpoint choice: metric -> True where higher is better.
SELECT_METRICS = {"auc": True, "gauc": True, "uauc": True, "logloss": False}


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _require(section, key: str, ok: bool, want: str, *, where: str = "train") -> None:
  if not ok:
    raise ValueError(f"config.{where}.{key} must be {want}, got {section[key]!r}")


def moment_config(cfg: ml_collections.ConfigDict) -> MomentConfig:
  return MomentConfig(**cfg.moment.to_dict())


def apply_overrides(cfg: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Sets each dotted key of ``values`` (``{"train.window_min": 30.0}``) in ``cfg``, in place;
  returns ``cfg``. Launchers that train several named configs with one set of overrides
  (``launch.run``, ``experiments.ablation``) take ``--config.a.b=v`` flags on a
  ``default_config()`` dict and pass ``config_flags.get_override_values`` here, so the syntax
  is the one ``launch.train`` has; ValueError names a key that is not in ``cfg``, or
  ``values`` that is not a dict."""
  if not isinstance(values, dict):
    raise ValueError(f"overrides must be a dict of dotted keys to values, e.g. "
                     f"{{'train.batch_size': 128}}; got a {type(values).__name__}: "
                     f"{str(values)[:80]}")
  for key, value in values.items():
    if not isinstance(key, str):
      raise ValueError(f"override key {key!r} must be a dotted string, e.g. 'train.batch_size'")
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
      if not hasattr(node, "keys") or part not in node:
        raise ValueError(f"no config section {part!r} in {key!r}")
      node = node[part]
    if not hasattr(node, "keys") or leaf not in node:
      raise ValueError(f"no config key {key!r}")
    if value is None and node[leaf] is not None:
      raise ValueError(f"config.{key}=None: expected a {type(node[leaf]).__name__} like its "
                       f"default {node[leaf]!r}")
    try:
      node[leaf] = value
    except TypeError as e:  # ml_collections refuses a value of another type
      raise ValueError(f"config.{key}={value!r}: {str(e).split('. ', 1)[-1]}") from None
  return cfg


_ASSIGN = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
_ENTRY = re.compile(r'^\s*\{?"(\w+)":\s*[^#]*#\s*(.*)$')
_MORE = re.compile(r"^\s*#\s{3,}(.*)$")  # a comment continued under the first line


def _commented_keys(func, prefix: str) -> dict[str, str]:
  """{dotted key: its comment, continuation lines joined} from the ``c.a.b = v  # ...``
  lines of a config function's source (a ``ConfigDict({...})`` value's entries get their own
  comment, else the assignment's)."""
  import inspect  # pylint: disable=g-import-not-at-top
  out, section, last = {}, None, None
  for line in inspect.getsource(func).splitlines():
    m, more = _ASSIGN.match(line), _MORE.match(line)
    if more and last:
      out[last] = f"{out[last]} {more.group(1).strip()}".strip()
      continue
    last = None
    if m:
      key, value, doc = m.groups()
      last = prefix + key
      out[last] = (doc or "").strip()
      section = last if "ConfigDict(" in value and not value.endswith(")") else None
      continue
    entry = _ENTRY.match(line)
    if section and entry:
      out[f"{section}.{entry.group(1)}"] = entry.group(2).strip()
    elif section:
      for name in re.findall(r'"(\w+)":', line):
        out[f"{section}.{name}"] = out[section]
  return out


def _loss_keys() -> dict[str, str]:
  """{loss.<key>: meaning} from the "Keys:" list of ``loss_config``'s docstring."""
  out, key = {}, None
  for line in (loss_config.loss_config.__doc__ or "").splitlines():
    m = re.match(r"^    (\w+): (.*)$", line)
    if m:
      key = f"loss.{m.group(1)}"
      out[key] = m.group(2).strip()
    elif key and line.startswith("      "):
      out[key] += " " + line.strip()
    else:
      key = None
  return out


def describe_keys() -> list[tuple[str, object, str]]:
  """Every key of ``default_config()`` as (dotted key, default, one-line meaning), sorted; the
  meaning is the comment beside the key's default (``mcjax.config``, ``mcjax.model.config``),
  the field's doc (``MomentConfig``) or the loss config's docstring; "" where none is written
  (tests/test_configs.py requires one for every key)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  docs = _commented_keys(default_config, "")
  docs.update(_commented_keys(model_config.default, "model."))
  docs.update({f"moment.{f.name}": f.metadata.get("doc", "")
               for f in dataclasses.fields(MomentConfig)})
  docs.update(_loss_keys())
  for t in TASKS:
    docs.setdefault(f"loss.task_weights.{t}", docs.get("loss.task_weights", ""))

  def leaves(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v

  return sorted((key, value, docs.get(key, ""))
                for key, value in leaves(default_config().to_dict()))
