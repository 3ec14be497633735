"""Dense building blocks with logical sharding names: Linear, MLP, banks of stacked MLPs
(experts, gates and task heads evaluated in one einsum per layer), and the initializer.

Rows gathered from a small table and multiplied by a kernel (``take_matmul``) are computed
as a gather from the table's projection when the table has fewer rows than the ids. A bank
whose members all read one input takes it unbroadcast (``MLPBank`` on [B, d_in]): its first
layer is then one matmul for all members.

Initialization uses a counter-based hash (murmur3's finalizer over an iota, seeded by the
key) instead of threefry: on CPU, XLA compiles one threefry draw per parameter in ~1 s, which
made building the model take 15-90 s; the hash compiles in milliseconds and gives the same
values eagerly, under jit and under eval_shape.

Compute dtype (``model.compute_dtype``): every module takes ``dtype``, None for float32 (no
cast at all, so the float32 model is exactly the one without the option) or bfloat16.
Parameters stay float32; a module casts its kernels, biases and inputs to ``dtype`` where it
uses them (``cast``), so its matmuls and activations run in bfloat16 and the gradients of the
float32 parameters come back float32 through the casts. Softmaxes run in float32
(``softmax``) and return the compute dtype.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mcjax.contract.batch import fmix32

_KERNEL_AXES = ("embed", "mlp")


def hash_uniform(key, shape, stddev: float, dtype=jnp.float32):
  """Uniform(-a, a) values with the given stddev, from a counter hash seeded by key."""
  data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype,
                                                           jax.dtypes.prng_key) else key
  return _hash_uniform(data, tuple(shape), float(stddev), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _hash_uniform(data, shape, stddev, dtype):
  data = data.reshape(-1).astype(jnp.uint32)
  seed = fmix32(data[0] ^ fmix32(data[-1] + jnp.uint32(0x9E3779B9), jnp), jnp)
  counter = jax.lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64)))
  bits = fmix32(fmix32(counter ^ seed, jnp) + seed * jnp.uint32(0x9E3779B1), jnp)
  unit = (bits >> 8).astype(jnp.float32) * (2.0 ** -24)  # [0, 1)
  return ((2.0 * unit - 1.0) * (stddev * 3.0 ** 0.5)).reshape(shape).astype(dtype)


def fan_in_init(in_axis: int = -2):
  """LeCun-style init (variance 1 / fan_in) from ``hash_uniform``."""
  def init(key, shape, dtype=jnp.float32):
    return hash_uniform(key, shape, 1.0 / max(shape[in_axis], 1) ** 0.5, dtype)
  return init


def stddev_init(stddev: float):
  """Initializer with a fixed stddev (embedding tables), from ``hash_uniform``."""
  return lambda key, shape, dtype=jnp.float32: hash_uniform(key, shape, stddev, dtype)


def compute_dtype(name: str | None):
  """``model.compute_dtype`` -> the ``dtype`` modules take: None for "float32" (no casts),
  else the jnp dtype ("bfloat16")."""
  return None if name in (None, "float32") else jnp.dtype(name)


def cast(x, dtype):
  """x in the compute dtype: x itself when dtype is None (float32: no op is added)."""
  return x if dtype is None else x.astype(dtype)


def softmax(x, axis: int = -1):
  """jax.nn.softmax computed in float32, returned in x's dtype (the plain softmax for a
  float32 x)."""
  if x.dtype == jnp.float32:
    return jax.nn.softmax(x, axis=axis)
  return jax.nn.softmax(x.astype(jnp.float32), axis=axis).astype(x.dtype)


def linear(d_in: int, d_out: int, *, rngs: nnx.Rngs, use_bias: bool = True,
           dtype=None) -> nnx.Linear:
  """nnx.Linear whose kernel carries the ("embed", "mlp") logical axes; float32 parameters,
  inputs, kernel and bias cast to ``dtype`` when called (None: float32, no cast)."""
  return nnx.Linear(d_in, d_out, use_bias=use_bias, rngs=rngs, kernel_init=fan_in_init(),
                    kernel_metadata={"out_sharding": _KERNEL_AXES}, dtype=dtype)


# gelu whose backward recomputes it from its input: the forward saves only the
# pre-activation, not the tanh and the output as well (less memory per step, same values)
_gelu = jax.checkpoint(jax.nn.gelu)


def take_matmul(table: jax.Array, ids: jax.Array, kernel: jax.Array) -> jax.Array:
  """``table[ids].reshape(ids.shape[:-1] + (-1,)) @ kernel``: the rows of ids [..., n] side
  by side ([..., n * dim]) times kernel [n * dim, d_out]. When the table has fewer rows than
  there are positions (ids.size / n), each feature's block of the kernel is folded into the
  table first (one [rows, d_out] projection per feature, then gathers): the same sums, fewer
  FLOPs, and no [..., n * dim] intermediate or its gradient."""
  n, dim = ids.shape[-1], table.shape[-1]
  if kernel.shape[0] != n * dim:
    raise ValueError(f"kernel has {kernel.shape[0]} rows; {n} features of width {dim} "
                     f"need {n * dim}")
  if table.shape[0] >= ids.size // n:
    rows = jnp.take(table, ids, axis=0, mode="clip")
    return rows.reshape(ids.shape[:-1] + (n * dim,)) @ kernel
  # [rows, n, d_out], row-major in rows: each gathered row is one contiguous block (an
  # [n, rows, d_out] projection was read transposed inside the gather, several times slower)
  kernels = kernel.reshape(n, dim, -1).transpose(1, 0, 2).reshape(dim, -1)
  projected = (table @ kernels).reshape(table.shape[0], n, -1)
  return sum(jnp.take(projected[:, j], ids[..., j], axis=0, mode="clip") for j in range(n))


class MLP(nnx.Module):
  """gelu MLP: widths (d_in, *hidden, d_out); no activation after the last layer."""

  def __init__(self, d_in: int, hidden: Sequence[int], d_out: int, *, rngs: nnx.Rngs,
               dtype=None):
    widths = (d_in, *hidden, d_out)
    self.dtype = dtype
    self.layers = nnx.List([linear(a, b, rngs=rngs, dtype=dtype)
                            for a, b in zip(widths[:-1], widths[1:])])

  def __call__(self, x):
    return self.after_first(self.layers[0](x))

  def after_first(self, h):
    """The rest of the MLP given its first layer's output h (x @ kernel + bias)."""
    for layer in self.layers[1:]:
      h = layer(_gelu(h))
    return h


class MLPBank(nnx.Module):
  """n independent gelu MLPs with stacked weights: [B, n, d_in] -> [B, n, d_out]; an input
  [B, d_in] is read by all n (as if broadcast to [B, n, d_in]). With a compute ``dtype`` and
  ``float32_output``, the last layer's matmul takes the compute dtype and returns float32
  (float32 accumulation, float32 bias): the task heads' logits."""

  def __init__(self, n: int, d_in: int, hidden: Sequence[int], d_out: int, *,
               rngs: nnx.Rngs, dtype=None, float32_output: bool = False):
    widths = (d_in, *hidden, d_out)
    self.dtype, self.float32_output = dtype, float32_output
    init = fan_in_init()
    self.kernels = nnx.List([
        nnx.Param(init(rngs.params(), (n, a, b)), out_sharding=(None, *_KERNEL_AXES))
        for a, b in zip(widths[:-1], widths[1:])])
    self.biases = nnx.List([nnx.Param(jnp.zeros((n, b))) for b in widths[1:]])

  def __call__(self, x):
    x = cast(x, self.dtype)
    for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
      spec = "bi,nio->bno" if x.ndim == 2 else "bni,nio->bno"
      last = i + 1 == len(self.kernels)
      if last and self.float32_output and self.dtype is not None:
        x = jnp.einsum(spec, x, cast(w[...], self.dtype),
                       preferred_element_type=jnp.float32) + b[...]
      else:
        x = jnp.einsum(spec, x, cast(w[...], self.dtype)) + cast(b[...], self.dtype)
      if not last:
        x = jax.nn.gelu(x)
    return x
