"""The model's config section: defaults, presets of the ablation switches, and validation.

``default()`` returns an ``ml_collections.ConfigDict`` with every key documented; experiments
override fields of it (never fork code). ``validate(cfg)`` raises ``ValueError`` naming the
offending key (``model.<path>``) before anything touches a device.
"""

from __future__ import annotations

import ml_collections

from mcjax.contract import schema

GSU_MODES = ("soft", "hard_author", "hard_category")
GSU_APPROX = ("off", "f32", "bf16", "simhash")  # pre-scores of the two-stage search (gsu.py)
TOWER_KINDS = ("cgc", "ple")
FUSIONS = ("product", "weighted_sum")
COMPUTE_DTYPES = ("float32", "bfloat16")
MATCH_SETS = ("counts", "affinity", "affinity_user", "affinity_log")  # model.match_set (matches.py)
TABLES = ("user", "user_side", "live_item", "live_author", "live_side",
          "sv_item", "sv_author", "sv_side")

# Logical axis names used by the model's variables, and their default mapping onto a
# ("data", "model") mesh: big tables row-sharded on "model", everything else replicated. The
# experiment config's ``mesh.logical_rules`` starts from this (its one copy).
LOGICAL_AXES = ("vocab", "vocab_small", "embed", "mlp")
LOGICAL_RULES = (("vocab", "model"), ("vocab_small", None), ("embed", None), ("mlp", None))


# The crowd features counted since the live's start, and the live's age: they grow with the
# audience over the day, so a model trained on earlier hours extrapolates them to later ones.
# `full` leaves them out of the crowd encoder (``crowd.drop``; chosen on validation and kept on
# fresh seeds, experiments/levers/RESULTS.md); the 30 s and 5 min windows carry the moment.
SINCE_START = tuple(n for n in schema.CROWD_FEATURES if n.endswith("_all")) + ("live_age_s",)


def default() -> ml_collections.ConfigDict:
  """The default model config, sized for a 2-core CPU."""
  c = ml_collections.ConfigDict()
  c.d_model = 32                # width of item/interest vectors (D) and of the contrastive space
  c.compute_dtype = "float32"   # dtype of activations and matmuls: "float32" or "bfloat16".
  #                               Parameters, tables, optimizer state, outputs (logits) and
  #                               losses stay float32; gathered rows are cast after the gather.
  #                               gsu.approx's pre-score keeps its own precision (model.py)
  c.use_crowd = True            # real-time crowd ("moment") features enter the towers
  c.use_sv_history = True       # short-video history branch (GSU + ESU); off: learned null vector
  c.use_lv_history = True       # live history branch (GSU + ESU + recent); off: learned null vectors
  c.use_match_features = True   # hard-search match counts of the enabled histories (same
  #                               author / category as the candidate, recency, length)
  c.match_set = "affinity"      # "counts": those four per history; "affinity" (the default,
  #                               chosen on validation in experiments/levers): also the user x
  #                               author interaction features (shares, last hour / day, liked,
  #                               followed, engagement; mcjax.model.matches.AFFINITY);
  #                               "affinity_user": also the user's own rates (USER_RATES);
  #                               "affinity_log": affinity + the log shares (LOG_SHARES)

  c.embedding = ml_collections.ConfigDict()
  c.embedding.dim = 32                  # width of every embedding row
  c.embedding.large_table_rows = 20_000  # tables with at least this many rows are "vocab"-sharded
  c.embedding.init_stddev = 0.05        # normal init of table rows
  c.embedding.table_dtype = "float32"   # storage of the tables: "float32" or "bfloat16" (half
  #                                       the bytes; rows are read in the compute dtype, row
  #                                       gradients, optimizer state and updates are float32,
  #                                       each updated row rounded once to bfloat16)
  c.embedding.vocab = ml_collections.ConfigDict({
      "user": 100_000,       # user_id (shared by both domains)
      "user_side": 1_024,    # user_age, user_gender, user_activity, hour_of_day
      "live_item": 50_000,   # live_id and lv_item (live-domain item space)
      "live_author": 20_000,  # author_id and lv_author (live-domain author space)
      "live_side": 4_096,    # categories, fans bucket, live actions, watch and time-gap buckets
      "sv_item": 200_000,    # sv_item (short-video item space)
      "sv_author": 50_000,   # sv_author, and author_id for author-level alignment
      "sv_side": 4_096,      # sv categories, tags, actions, progress and time-gap buckets
  })

  c.features = ml_collections.ConfigDict()
  c.features.time_gap_buckets = 24  # floor(log2(1 + gap seconds)) clipped; the last holds older
  c.features.progress_buckets = 12  # floor(10 * play progress) clipped (>= 1.0 means replays)
  c.features.watch_buckets = 16     # floor(log2(1 + seconds watched)) clipped

  c.gsu = ml_collections.ConfigDict()
  c.gsu.mode = "soft"   # "soft": inner product top-k; "hard_author" / "hard_category": same
  #                       author / category as the candidate, most recent first
  c.gsu.top_k = 32      # items kept per domain (capped by the padded history length)
  c.gsu.approx = "simhash"  # two-stage search: a pre-score of every position without
  #                       gradient ("f32" / "bf16" / "simhash": sign bits, the default, chosen
  #                       on validation) keeps `candidates`, the model runs on those only;
  #                       "off": score every position with gradient (the reference)
  c.gsu.candidates = 64  # positions kept by the pre-score (>= top_k; histories no longer than
  #                        this, plus the recent-N for live, are not cut)

  c.esu = ml_collections.ConfigDict()
  c.esu.num_heads = 2   # heads of the target attention; must divide d_model
  c.esu.recent_n = 16   # the last N live items get their own target attention (0: off)

  c.crowd = ml_collections.ConfigDict()
  c.crowd.hidden = (64,)  # MLP widths over log1p-scaled CROWD_FEATURES (output is d_model)
  c.crowd.drop = SINCE_START  # names of CROWD_FEATURES the crowd encoder leaves out (command
  #                         line: --config.model.crowd.drop=exposures_all,live_age_s; empty,
  #                         --config.model.crowd.drop=, reads them all)
  c.crowd.wide = False    # also a linear map of those (log1p) features straight to every
  #                         task's logit, starting at 0 (a wide path beside the deep one)

  c.towers = ml_collections.ConfigDict()
  c.towers.kind = "cgc"          # "cgc" (one extraction level) or "ple" (stacked CGC levels)
  c.towers.levels = 2            # extraction levels when kind == "ple"
  c.towers.shared_experts = 2    # shared experts per level
  c.towers.task_experts = 1      # experts per task per level
  c.towers.expert_hidden = (64,)  # hidden widths of each expert MLP
  c.towers.expert_dim = 64       # expert output width
  c.towers.head_hidden = (32,)   # hidden widths of each task head (one logit per task)
  c.towers.cross_layers = 0      # DCN-v2 cross layers on the towers' input (0: none)
  c.towers.cross_rank = 0        # rank of each cross layer's W = U V^T (0: full d_in x d_in)

  c.contrastive = ml_collections.ConfigDict()
  c.contrastive.author_level = False  # also output author_sv / author_lv (the candidate author
  #                                     in the short-video and the live embedding spaces)

  c.ranking = ml_collections.ConfigDict()
  c.ranking.fusion = "product"  # "product": prod p_t^w_t; "weighted_sum": sum w_t p_t
  c.ranking.weights = ml_collections.ConfigDict(  # per-task weight in the fused score
      {"ctr": 1.0, "lvtr": 0.5, "ltr": 0.1, "cmtr": 0.1, "gtr": 0.2, "wtr": 0.1})
  return c


def crowd_drop(cfg) -> tuple[str, ...]:
  """``crowd.drop`` as names (an element may hold several, comma-separated: the command line's
  ``--config.model.crowd.drop=a,b`` arrives as one string)."""
  return tuple(n.strip() for item in cfg.crowd.get("drop", ()) for n in str(item).split(",")
               if n.strip())


def _fail(key: str, msg: str):
  raise ValueError(f"model.{key} {msg}")


def _positive_ints(cfg, key: str, allow_empty: bool = True):
  value = cfg
  for part in key.split("."):
    value = value[part]
  values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if not allow_empty and not values:
    _fail(key, "must not be empty")
  for v in values:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      _fail(key, f"must be positive integer(s), got {value!r}")


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks a model config; raises ValueError naming the key (e.g. ``model.gsu.top_k``)."""
  for key in ("d_model", "embedding.dim", "embedding.large_table_rows",
              "features.time_gap_buckets", "features.progress_buckets",
              "features.watch_buckets", "gsu.top_k", "esu.num_heads", "towers.levels",
              "towers.shared_experts", "towers.expert_dim", "crowd.hidden",
              "towers.expert_hidden", "towers.head_hidden"):
    _positive_ints(cfg, key)
  for key in ("cross_layers", "cross_rank"):
    value = cfg.towers[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      _fail(f"towers.{key}", f"must be an int >= 0, got {value!r}")
  if cfg.towers.task_experts < 0 or cfg.esu.recent_n < 0:
    _fail("towers.task_experts" if cfg.towers.task_experts < 0 else "esu.recent_n",
          "must be >= 0")
  if cfg.towers.task_experts + cfg.towers.shared_experts <= 0:
    _fail("towers.task_experts", "plus towers.shared_experts must be > 0")
  if cfg.d_model % cfg.esu.num_heads:
    _fail("esu.num_heads", f"must divide model.d_model={cfg.d_model}")
  if cfg.gsu.top_k > 10_000:
    _fail("gsu.top_k", "must be <= 10000 (the longest history the model supports)")
  if cfg.gsu.mode not in GSU_MODES:
    _fail("gsu.mode", f"must be one of {GSU_MODES}, got {cfg.gsu.mode!r}")
  if cfg.gsu.approx not in GSU_APPROX:
    _fail("gsu.approx", f"must be one of {GSU_APPROX}, got {cfg.gsu.approx!r}")
  _positive_ints(cfg, "gsu.candidates")
  if cfg.gsu.approx != "off" and cfg.gsu.candidates < cfg.gsu.top_k:
    _fail("gsu.candidates", f"must be >= model.gsu.top_k={cfg.gsu.top_k}, got "
          f"{cfg.gsu.candidates}")
  if cfg.towers.kind not in TOWER_KINDS:
    _fail("towers.kind", f"must be one of {TOWER_KINDS}, got {cfg.towers.kind!r}")
  if cfg.ranking.fusion not in FUSIONS:
    _fail("ranking.fusion", f"must be one of {FUSIONS}, got {cfg.ranking.fusion!r}")
  missing = [t for t in schema.TASKS if t not in cfg.ranking.weights]
  extra = [t for t in cfg.ranking.weights if t not in schema.TASKS]
  if missing or extra:
    _fail("ranking.weights", f"must have exactly the tasks {schema.TASKS} "
          f"(missing {missing}, unknown {extra})")
  for t in schema.TASKS:
    if not cfg.ranking.weights[t] >= 0:
      _fail(f"ranking.weights.{t}", f"must be >= 0, got {cfg.ranking.weights[t]!r}")
  for t in TABLES:
    if t not in cfg.embedding.vocab:
      _fail(f"embedding.vocab.{t}", "is missing")
    _positive_ints(cfg, f"embedding.vocab.{t}")
    if cfg.embedding.vocab[t] >= 2**30:
      _fail(f"embedding.vocab.{t}", "must be < 2**30 (int32 row indices, with room above "
            "the vocabulary for the sparse update's padding slots)")
  extra = [t for t in cfg.embedding.vocab if t not in TABLES]
  if extra:
    _fail("embedding.vocab", f"has unknown table(s) {extra}; known: {TABLES}")
  drop = cfg.crowd.get("drop", ())
  names = crowd_drop(cfg) if isinstance(drop, (tuple, list)) else (drop,)
  unknown = [n for n in names if n not in schema.CROWD_FEATURES]
  if unknown:
    _fail("crowd.drop", f"must be names of CROWD_FEATURES {schema.CROWD_FEATURES}, got "
          f"unknown {unknown}")
  if len(set(names)) >= len(schema.CROWD_FEATURES):
    _fail("crowd.drop", "leaves no crowd feature; set model.use_crowd=False instead")
  if not isinstance(cfg.crowd.get("wide", False), bool):  # absent in configs saved before it
    _fail("crowd.wide", f"must be a bool, got {cfg.crowd.wide!r}")
  if cfg.match_set not in MATCH_SETS:
    _fail("match_set", f"must be one of {MATCH_SETS}, got {cfg.match_set!r}")
  for key in ("use_crowd", "use_sv_history", "use_lv_history", "use_match_features",
              "contrastive.author_level"):
    value = cfg
    for part in key.split("."):
      value = value[part]
    if not isinstance(value, bool):
      _fail(key, f"must be a bool, got {value!r}")
  if not cfg.embedding.init_stddev > 0:
    _fail("embedding.init_stddev", "must be > 0")
  table_dtype = cfg.embedding.get("table_dtype", "float32")
  if not isinstance(table_dtype, str) or table_dtype not in COMPUTE_DTYPES:
    _fail("embedding.table_dtype", f"must be one of {COMPUTE_DTYPES}, got {table_dtype!r}")
  compute_dtype = cfg.get("compute_dtype", "float32")
  if not isinstance(compute_dtype, str) or compute_dtype not in COMPUTE_DTYPES:
    _fail("compute_dtype", f"must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
