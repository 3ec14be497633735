"""The training-system core: mesh and partition rules, the sharded train state, sparse
embedding updates, the jitted train/eval steps and Orbax checkpoints."""
