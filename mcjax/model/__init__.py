"""The Moment&Cross model (Flax NNX): ``build_model(cfg, rngs=...)`` with ``config.default()``."""

from mcjax.model import config
from mcjax.model.model import MomentCross, build_model
from mcjax.model.ranking import ranking_score

__all__ = ["MomentCross", "build_model", "config", "ranking_score"]
