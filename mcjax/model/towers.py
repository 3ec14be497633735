"""Multi-task towers: CGC and PLE (Tang et al., RecSys 2020), one logit per task.

A CGC level has task-specific experts (``task_experts`` per task) and ``shared_experts``;
each task's gate mixes its own experts with the shared ones. PLE stacks ``levels`` CGC levels;
every level but the last also has a shared gate over all experts, whose mix is the next
level's shared input. CGC is PLE with one level. Experts, gates and heads are banks of stacked
MLPs (one einsum per layer for all of them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mcjax.model import layers


class ExtractionLevel(nnx.Module):
  """One CGC level: (task inputs [B, T, d_in], shared input [B, d_in]) -> same at expert_dim."""

  def __init__(self, n_tasks: int, d_in: int, tcfg, *, last: bool, rngs: nnx.Rngs):
    self.n_tasks, self.n_task_experts = n_tasks, tcfg.task_experts
    self.n_shared = tcfg.shared_experts
    hidden, d_out = tuple(tcfg.expert_hidden), tcfg.expert_dim
    if self.n_task_experts:
      self.task_experts = layers.MLPBank(n_tasks * self.n_task_experts, d_in, hidden, d_out,
                                         rngs=rngs)
    self.shared_experts = layers.MLPBank(self.n_shared, d_in, hidden, d_out, rngs=rngs)
    self.task_gates = layers.MLPBank(n_tasks, d_in, (), self.n_task_experts + self.n_shared,
                                     rngs=rngs)
    self.shared_gate = None if last else layers.linear(
        d_in, n_tasks * self.n_task_experts + self.n_shared, rngs=rngs)

  def __call__(self, task_in, shared_in):
    b, t = task_in.shape[:2]
    shared = self.shared_experts(jnp.broadcast_to(shared_in[:, None],
                                                  (b, self.n_shared, shared_in.shape[-1])))
    experts = [jnp.broadcast_to(shared[:, None], (b, t) + shared.shape[1:])]
    if self.n_task_experts:
      own = self.task_experts(jnp.repeat(task_in, self.n_task_experts, axis=1))
      experts.insert(0, own.reshape(b, t, self.n_task_experts, -1))
    per_task = jnp.concatenate(experts, axis=2)  # [B, T, E + S, d_out]
    gates = jax.nn.softmax(self.task_gates(task_in), axis=-1)
    task_out = jnp.einsum("bte,bted->btd", gates, per_task)
    if self.shared_gate is None:
      return task_out, None
    everything = jnp.concatenate(
        [per_task[:, :, :self.n_task_experts].reshape(b, -1, shared.shape[-1]), shared], axis=1)
    shared_gates = jax.nn.softmax(self.shared_gate(shared_in), axis=-1)
    return task_out, jnp.einsum("be,bed->bd", shared_gates, everything)


class Towers(nnx.Module):
  """x [B, d_in] -> logits [B, n_tasks] through CGC or PLE and per-task head MLPs."""

  def __init__(self, n_tasks: int, d_in: int, tcfg, *, rngs: nnx.Rngs):
    if tcfg.kind not in ("cgc", "ple"):
      raise ValueError(f"model.towers.kind must be cgc or ple, got {tcfg.kind!r}")
    n_levels = 1 if tcfg.kind == "cgc" else tcfg.levels
    dims = [d_in] + [tcfg.expert_dim] * n_levels
    self.n_tasks = n_tasks
    self.levels = nnx.List([
        ExtractionLevel(n_tasks, dims[i], tcfg, last=i == n_levels - 1, rngs=rngs)
        for i in range(n_levels)])
    self.heads = layers.MLPBank(n_tasks, tcfg.expert_dim, tuple(tcfg.head_hidden), 1,
                                rngs=rngs)

  def __call__(self, x):
    task_in = jnp.broadcast_to(x[:, None], (x.shape[0], self.n_tasks, x.shape[-1]))
    shared_in = x
    for level in self.levels:
      task_in, shared_in = level(task_in, shared_in)
    return self.heads(task_in)[..., 0]
