"""The Grain input pipeline: fixed-shape, padded numpy batches from a sample source.

    it = make_batches(open_samples(dir, "train"), batch_size=1024, sv_len=256, lv_len=64)
    for batch in it: ...            # dict: every schema field, sv_len, lv_len, weight
    state = it.get_state(); ...; it.set_state(state)   # resumes mid-epoch exactly

Each element is one *global* batch index; the map reads the batch with a single
``source.__getitems__`` call (a columnar sample table) and pads it vectorised. Histories are
most recent first, so truncation to ``sv_len`` / ``lv_len`` keeps the newest items. Batches
always have ``batch_size // process_count`` rows: a short last batch is filled with zero rows
whose ``weight`` is 0 (fixed shapes, no recompiles), unless ``drop_remainder``.

Multi-process: process p of P takes the contiguous rows [p * B / P, (p + 1) * B / P) of every
global batch, so concatenating the processes' batches in process order gives exactly the
single-process batch (what ``jax.make_array_from_process_local_data`` expects).

Shuffling (the trainer's ``train.shuffle_within_window``, online and offline: within one
window of the plan's training samples) is storage-aware: per epoch, runs of
``source.block_size`` consecutive selected samples are permuted, then samples are permuted
within windows of ``shuffle_window`` samples, so a batch touches few shard blocks. Without
shuffling, batches follow the selection's order (time order).
"""

from __future__ import annotations

import numpy as np
import grain

from mcjax.contract.batch import pad_table, zero_batch

def selection(indices, n: int) -> np.ndarray:
  """The selected sample indices (int64) from None (all), a range or an index array."""
  if indices is None:
    return np.arange(n, dtype=np.int64)
  sel = np.asarray(indices, np.int64).reshape(-1)
  if sel.size and (sel.min() < 0 or sel.max() >= n):
    raise ValueError(f"indices: out of range [0, {n}) for a source of {n} samples")
  return sel


def shuffled_positions(n: int, *, seed: int, epoch: int, chunk: int, window: int) -> np.ndarray:
  """A permutation of range(n): runs of `chunk` permuted, then shuffled within `window`s."""
  rng = np.random.default_rng([seed, epoch])
  chunk = max(1, int(chunk))
  starts = rng.permutation(-(-n // chunk)) * chunk
  sizes = np.minimum(chunk, n - starts)
  out_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  pos = np.repeat(starts - out_starts, sizes) + np.arange(n)
  if window > 1:
    pos = pos[np.lexsort((rng.random(n), np.arange(n) // window))]
  return pos


class BatchLoader:
  """Global batch index -> this process's padded batch (a picklable Grain map function)."""

  def __init__(self, source, order: np.ndarray, *, batch_size: int, sv_len: int, lv_len: int,
               batches_per_epoch: int, shuffle: bool, seed: int, shuffle_window: int,
               process_index: int, process_count: int):
    self.source, self.order = source, order
    self.batch_size, self.sv_len, self.lv_len = batch_size, sv_len, lv_len
    self.batches_per_epoch = batches_per_epoch
    self.shuffle, self.seed, self.shuffle_window = shuffle, seed, shuffle_window
    self.local = batch_size // process_count
    self.first = process_index * self.local
    self._epoch = None

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return self.order
    if self._epoch is None or self._epoch[0] != epoch:
      pos = shuffled_positions(len(self.order), seed=self.seed, epoch=epoch,
                               chunk=getattr(self.source, "block_size", 1),
                               window=self.shuffle_window)
      self._epoch = (epoch, self.order[pos])
    return self._epoch[1]

  def __call__(self, index: int) -> dict:
    epoch, b = divmod(int(index), self.batches_per_epoch)
    order = self._epoch_order(epoch)
    start = b * self.batch_size + self.first
    rows = order[start:min(start + self.local, len(order))]
    if len(rows) == self.local:
      batch = pad_table(self.source.__getitems__(rows), self.sv_len, self.lv_len)
      batch["weight"] = np.ones(self.local, np.float32)
      return batch
    batch = zero_batch(self.local, self.sv_len, self.lv_len)
    if len(rows):
      real = pad_table(self.source.__getitems__(rows), self.sv_len, self.lv_len)
      for name, value in real.items():
        batch[name][:len(rows)] = value
      batch["weight"][:len(rows)] = 1.0
    return batch


def make_batches(source, *, batch_size: int, sv_len: int, lv_len: int, indices=None,
                 shuffle: bool = False, seed: int = 0, num_epochs: int = 1,
                 drop_remainder: bool = False, process_index: int | None = None,
                 process_count: int | None = None, prefetch_workers: int = 0,
                 read_threads: int = 1, shuffle_window: int | None = None
                 ) -> grain.IterDataset:
  """A Grain IterDataset of padded numpy batches (see the module docstring).

  Args:
    source: a ShardSource / TableSource (``len``, ``__getitems__`` -> sample table).
    batch_size: the global batch size (a multiple of process_count).
    sv_len, lv_len: history widths.
    indices: the samples to read, in order (None: all; a range or an index array, e.g. one
      time window's samples from ``sample_ts_ms``).
    shuffle, seed: shuffle per epoch (deterministic in seed and epoch).
    num_epochs: passes over the selection.
    drop_remainder: drop a short last batch per epoch instead of padding it with weight 0.
    process_index, process_count: this process's slice (default: jax.process_index/count).
    prefetch_workers: Grain worker processes (0: read in this process).
    read_threads: in-process prefetch threads (>= 1).
    shuffle_window: samples shuffled together (default max(batch_size, 8 * block size)).
  """
  for name, value in (("batch_size", batch_size), ("num_epochs", num_epochs),
                      ("read_threads", read_threads)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"make_batches: {name}={value!r}, expected an int >= 1")
  for name, value in (("sv_len", sv_len), ("lv_len", lv_len)):
    if not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"make_batches: {name}={value!r}, expected an int >= 0")
  if process_index is None or process_count is None:
    import jax  # only when the caller leaves the process layout to JAX
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"make_batches: process_index={process_index} not in "
                     f"[0, process_count={process_count})")
  if batch_size % process_count:
    raise ValueError(f"make_batches: batch_size={batch_size} is not a multiple of "
                     f"process_count={process_count}")
  order = selection(indices, len(source))
  per_epoch = len(order) // batch_size if drop_remainder else -(-len(order) // batch_size)
  if per_epoch == 0:
    raise ValueError(f"make_batches: {len(order)} selected samples give no batch of "
                     f"{batch_size} (drop_remainder={drop_remainder})")
  window = shuffle_window or max(batch_size, 8 * getattr(source, "block_size", 1))
  loader = BatchLoader(source, order, batch_size=batch_size, sv_len=sv_len, lv_len=lv_len,
                       batches_per_epoch=per_epoch, shuffle=shuffle, seed=seed,
                       shuffle_window=window, process_index=process_index,
                       process_count=process_count)
  ds = grain.MapDataset.range(per_epoch * num_epochs).map(loader)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=2 * read_threads))
  if prefetch_workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=prefetch_workers))
  return it


def num_batches(n: int, batch_size: int, *, num_epochs: int = 1,
                drop_remainder: bool = False) -> int:
  """How many batches make_batches yields for n selected samples."""
  per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)
  return per_epoch * num_epochs
