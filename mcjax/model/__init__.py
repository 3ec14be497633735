"""The Moment&Cross model (Flax NNX): ``build_model(cfg, rngs=...)`` with ``config.default()``."""

from mcjax.model import config

_LAZY = {"MomentCross": "mcjax.model.model", "build_model": "mcjax.model.model",
         "ranking_score": "mcjax.model.ranking"}


def __getattr__(name: str):
  """The model and ranking import JAX when first named, so reading the model's config section
  (``mcjax.model.config``, used by ``mcjax.config``) does not."""
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'mcjax.model' has no attribute {name!r}")

__all__ = ["MomentCross", "build_model", "config", "ranking_score"]
