"""The training-system core: mesh and partition rules, the sharded train state, sparse
embedding updates, the jitted train/eval steps, Orbax checkpoints, time plans and the run
folder."""


class RunError(RuntimeError):
  """A run cannot go on as asked: the workdir is another run's or in use, the config does not
  fit the data, or training diverged. The message is one line naming what to change; the
  launchers print it and exit non-zero."""
