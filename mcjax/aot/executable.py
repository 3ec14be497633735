"""Compiled executables to and from a file: a job on the target slice loads the program
``launch.compile --save`` compiled instead of compiling it (MaxText's compile-then-load)."""

from __future__ import annotations

import pickle

from jax.experimental import serialize_executable


def save(path: str, compiled: dict) -> None:
  """Writes {step name: compiled executable} to ``path`` (one pickle of the serialized
  executables and their argument / result tree structures)."""
  blob = {name: serialize_executable.serialize(c) for name, c in compiled.items()}
  with open(path, "wb") as f:
    pickle.dump(blob, f)


def load(path: str, name: str = "train"):
  """The step ``name`` of a ``save``d file, loaded onto this machine's devices (the slice
  it was compiled for): call it as the jitted step."""
  with open(path, "rb") as f:
    payload, in_tree, out_tree = pickle.load(f)[name]
  return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
