"""The runtime under training, serving and the benchmarks: the device mesh, partition rules,
the sharded state, Orbax checkpoints, the sparse row update, the embedding exchange, the one
forward pass and the jitted steps.

``build(cfg, mesh)`` is the one place where a config becomes model definition, state,
shardings and steps (``mcjax.runtime.builder``); the trainer (``mcjax.train.loop``), the
scorer (``mcjax.serve``) and the benchmarks call it.
"""

from mcjax.runtime.builder import Runtime, build

__all__ = ["Runtime", "build"]
