"""Batches for the sharded train step: infinite training streams and padded evaluation.

Everything is a pure function of indices, which is what makes runs reproducible
and resumable: the global stream of a domain is `shuffle(seed, epoch)` of its
examples repeated forever, with augmentation seeded by the position in the
stream; the global batch of step `s` is stream elements `[s*B, (s+1)*B)`; process
`p` of `P` reads only the contiguous block `[s*B + p*B/P, s*B + (p+1)*B/P)` of
it, the block its own devices hold in the `('data',)` mesh. Resuming at step `s`
starts reading at `s` — no state to checkpoint, no data replayed.

grain (`MapDataset`) provides the random access, the per-example seeding and the
multithreaded reading.
"""

from __future__ import annotations

from typing import Any, Iterator

import grain
import numpy as np

from tljax.data.preprocess import PreprocessFn
from tljax.data.registry import Domain

Batch = dict[str, np.ndarray]


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"the global batch size {global_batch_size} is not divisible "
                     f"by the number of processes {process_count}")
  return global_batch_size // process_count


def _process_block(global_batch_size: int, process_index: int, process_count: int):
  """Maps a process-local position to its position in the global stream."""
  local = _local_batch_size(global_batch_size, process_count)

  def to_global(position: int) -> int:
    return (position // local) * global_batch_size + process_index * local + position % local

  return to_global


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def _stack(examples: list[dict[str, Any]]) -> Batch:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def train_batches(domain: Domain, *, global_batch_size: int, preprocess: PreprocessFn,
                  seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1, num_threads: int = 4,
                  prefetch: int = 256) -> Iterator[Batch]:
  """This process's share of the global batches of steps `start_step, ...`.

  Args:
    domain: the examples.
    global_batch_size: examples per step over all processes.
    preprocess: per-example function `(example, rng) -> example`.
    seed: data seed (shuffling and augmentation).
    start_step: the first step to produce (for resuming).
    process_index: `jax.process_index()`.
    process_count: `jax.process_count()`.
    num_threads: reader threads.
    prefetch: examples read ahead.

  Yields:
    `{'image': (b, H, W, C) float32, 'label': (b,) int32}` with
    `b = global_batch_size / process_count`.
  """
  if len(domain) == 0:
    raise ValueError(f"{domain.name}:{domain.split} has no examples")
  stream = (grain.MapDataset.source(domain.source).seed(seed).shuffle().repeat()
            .random_map(preprocess))
  to_global = _process_block(global_batch_size, process_index, process_count)
  local_size = _local_batch_size(global_batch_size, process_count)
  local = (grain.MapDataset.range(start_step * local_size, 2**62)
           .map(lambda position: stream[to_global(position)]))
  examples = iter(local.to_iter_dataset(_read_options(num_threads, prefetch)))
  while True:
    yield _stack([next(examples) for _ in range(local_size)])


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def eval_batches(domain: Domain, *, global_batch_size: int, preprocess: PreprocessFn,
                 process_index: int = 0, process_count: int = 1,
                 num_threads: int = 4, prefetch: int = 256) -> Iterator[Batch]:
  """One pass over `domain` in order, padded to whole global batches.

  Every example appears exactly once with `mask` 1; padding examples repeat
  the first example with `mask` 0, so metrics must be weighted by `mask`.
  Preprocessing gets a fixed rng per example (evaluation should be deterministic).
  """
  n = len(domain)
  if n == 0:
    raise ValueError(f"{domain.name}:{domain.split} has no examples")
  local_size = _local_batch_size(global_batch_size, process_count)
  to_global = _process_block(global_batch_size, process_index, process_count)
  num_batches = num_eval_batches(n, global_batch_size)
  rng = np.random.default_rng(0)

  def read(position: int) -> dict[str, Any]:
    index = to_global(position)
    example = preprocess(domain.source[index % n], rng)
    return {**example, "mask": np.float32(index < n), "index": np.int64(index)}

  local = grain.MapDataset.range(num_batches * local_size).map(read)
  examples = iter(local.to_iter_dataset(_read_options(num_threads, prefetch)))
  for _ in range(num_batches):
    yield _stack([next(examples) for _ in range(local_size)])
