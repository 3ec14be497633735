"""Multi-task towers: CGC and PLE (Tang et al., RecSys 2020), one logit per task.

A CGC level has task-specific experts (``task_experts`` per task) and ``shared_experts``;
each task's gate mixes its own experts with the shared ones. PLE stacks ``levels`` CGC levels;
every level but the last also has a shared gate over all experts, whose mix is the next
level's shared input. CGC is PLE with one level. Experts, gates and heads are banks of stacked
MLPs (one einsum per layer for all of them). At the first level every task's input is the
shared input, so it is passed once (``task_in=None``), not broadcast per task: the first
layer of all experts and gates is then one matmul.

``cross_layers > 0`` puts DCN-v2's cross network (Wang et al., WWW 2021) before the first
level: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``, explicit multiplicative crosses of the
input features (a user embedding times a candidate embedding is one such term, which the
experts' gelu MLPs only approximate); ``cross_rank > 0`` factors each W as U V^T.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mcjax.model import layers


class CrossNet(nnx.Module):
  """DCN-v2 cross layers: [B, d] -> [B, d], x_{l+1} = x_0 * (W_l x_l + b_l) + x_l."""

  def __init__(self, d: int, n_layers: int, rank: int, *, rngs: nnx.Rngs, dtype=None):
    self.rank = rank
    if rank:
      self.down = nnx.List([layers.linear(d, rank, rngs=rngs, use_bias=False, dtype=dtype)
                            for _ in range(n_layers)])
    self.up = nnx.List([layers.linear(rank or d, d, rngs=rngs, dtype=dtype)
                        for _ in range(n_layers)])

  def __call__(self, x0):
    x = x0
    for i, up in enumerate(self.up):
      x = x0 * up(self.down[i](x) if self.rank else x) + x
    return x


class ExtractionLevel(nnx.Module):
  """One CGC level: (task inputs [B, T, d_in], shared input [B, d_in]) -> same at expert_dim.
  ``task_in=None`` means every task's input is the shared input (the first level)."""

  def __init__(self, n_tasks: int, d_in: int, tcfg, *, last: bool, rngs: nnx.Rngs,
               dtype=None):
    self.n_tasks, self.n_task_experts = n_tasks, tcfg.task_experts
    self.n_shared = tcfg.shared_experts
    hidden, d_out = tuple(tcfg.expert_hidden), tcfg.expert_dim
    if self.n_task_experts:
      self.task_experts = layers.MLPBank(n_tasks * self.n_task_experts, d_in, hidden, d_out,
                                         rngs=rngs, dtype=dtype)
    self.shared_experts = layers.MLPBank(self.n_shared, d_in, hidden, d_out, rngs=rngs,
                                         dtype=dtype)
    self.task_gates = layers.MLPBank(n_tasks, d_in, (), self.n_task_experts + self.n_shared,
                                     rngs=rngs, dtype=dtype)
    self.shared_gate = None if last else layers.linear(
        d_in, n_tasks * self.n_task_experts + self.n_shared, rngs=rngs, dtype=dtype)

  def __call__(self, task_in, shared_in):
    b, t, e = shared_in.shape[0], self.n_tasks, self.n_task_experts
    shared = self.shared_experts(shared_in)  # [B, S, d_out]
    gate_in = shared_in if task_in is None else task_in
    gates = layers.softmax(self.task_gates(gate_in), axis=-1)  # [B, T, E + S]
    task_out = jnp.einsum("bts,bsd->btd", gates[..., e:], shared)
    own = None
    if e:
      own_in = shared_in if task_in is None else jnp.repeat(task_in, e, axis=1)
      own = self.task_experts(own_in)  # [B, T * E, d_out]
      task_out += jnp.einsum("bte,bted->btd", gates[..., :e], own.reshape(b, t, e, -1))
    if self.shared_gate is None:
      return task_out, None
    everything = shared if own is None else jnp.concatenate([own, shared], axis=1)
    shared_gates = layers.softmax(self.shared_gate(shared_in), axis=-1)
    return task_out, jnp.einsum("be,bed->bd", shared_gates, everything)


class Towers(nnx.Module):
  """x [B, d_in] -> logits [B, n_tasks] through CGC or PLE and per-task head MLPs. With a
  compute ``dtype`` the logits still come out float32 (the heads' last matmul returns
  float32)."""

  def __init__(self, n_tasks: int, d_in: int, tcfg, *, rngs: nnx.Rngs, dtype=None):
    if tcfg.kind not in ("cgc", "ple"):
      raise ValueError(f"model.towers.kind must be cgc or ple, got {tcfg.kind!r}")
    n_levels = 1 if tcfg.kind == "cgc" else tcfg.levels
    dims = [d_in] + [tcfg.expert_dim] * n_levels
    self.n_tasks = n_tasks
    n_cross = int(tcfg.get("cross_layers", 0))
    self.cross = (CrossNet(d_in, n_cross, int(tcfg.get("cross_rank", 0)), rngs=rngs,
                           dtype=dtype) if n_cross else None)
    self.levels = nnx.List([
        ExtractionLevel(n_tasks, dims[i], tcfg, last=i == n_levels - 1, rngs=rngs,
                        dtype=dtype)
        for i in range(n_levels)])
    self.heads = layers.MLPBank(n_tasks, tcfg.expert_dim, tuple(tcfg.head_hidden), 1,
                                rngs=rngs, dtype=dtype, float32_output=True)

  def __call__(self, x):
    task_in, shared_in = None, x if self.cross is None else self.cross(x)
    for level in self.levels:
      task_in, shared_in = level(task_in, shared_in)
    return self.heads(task_in)[..., 0]
