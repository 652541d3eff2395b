"""Batches for the sharded train step: infinite training streams and padded evaluation.

Everything is a pure function of indices, which is what makes runs reproducible
and resumable:

- the global stream of a domain visits its examples in a fresh permutation
  every epoch, `permutation(seed, epoch)`, so stream position `g` holds example
  `permutation(seed, g // n)[g % n]`;
- the global batch of step `s` is stream positions `[s*B, (s+1)*B)`;
- the example at position `g` is augmented with a generator seeded by
  `(seed, g)`, independent of the number of processes;
- process `p` of `P` reads only the contiguous block
  `[s*B + p*B/P, s*B + (p+1)*B/P)`, the block its own devices hold in the
  `('data',)` mesh.

Resuming at step `s` starts reading at `s`: no iterator state to checkpoint, no
data replayed. grain runs the batch assembly (reading, decoding, augmenting)
in background threads, several steps ahead of the train step, or, with
`num_workers > 0`, in that many worker processes (each with its own threads),
which decode and augment JPEGs free of the GIL. Batches are the same either
way: each is a function of its step alone.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator, Sequence

from absl import flags
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


@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng((seed, epoch)).permutation(num_examples)


def stream_indices(positions: np.ndarray, *, seed: int, num_examples: int) -> np.ndarray:
  """Example indices at the given positions of a domain's infinite training stream."""
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    where = epochs == epoch
    out[where] = _epoch_permutation(seed, int(epoch), num_examples)[offsets[where]]
  return out


def _read(source: Sequence[dict[str, Any]], indices: np.ndarray) -> list[dict[str, Any]]:
  get_batch = getattr(source, "get_batch", None)
  if get_batch is not None:  # in-memory sources hand out many examples at once
    return get_batch(indices)
  get_items = getattr(source, "__getitems__", None)
  if get_items is not None:  # TFDS array_record sources read a batch in one call
    return list(get_items([int(i) for i in indices]))
  return [source[int(i)] for i in indices]


def _stack(examples: list[dict[str, Any]]) -> Batch:
  shapes = sorted({np.shape(e["image"]) for e in examples})
  if len(shapes) > 1:
    # Presets that keep the stored size (`digits`, `none`) on a domain of
    # images of any size, e.g. an image folder.
    raise ValueError(
        f"images of different shapes in one batch ({', '.join(map(str, shapes[:3]))}): "
        "the preprocessing keeps each image's stored size; use one that resizes, e.g. "
        "--config.data.train_preprocess.name=digits_resized and "
        "--config.data.eval_preprocess.name=digits_resized (32x32; its `size` sets another), "
        "or imagenet_train / imagenet_eval")
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _preprocess_all(examples, positions, preprocess: PreprocessFn, seed: int):
  return [preprocess(example, np.random.default_rng((seed, int(position))))
          for example, position in zip(examples, positions)]


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def _iterate(batches: grain.MapDataset, num_threads: int, prefetch: int,
             num_workers: int) -> Iterator[Batch]:
  """Iterates `batches` ahead of the caller, in threads or in worker processes."""
  dataset = batches.to_iter_dataset(_read_options(num_threads, prefetch))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain reads its absl flags when starting workers; outside an absl app
      # (tests, notebooks) nothing has parsed them, and their defaults are right.
      flags.FLAGS.mark_as_parsed()
    # Worker w assembles batches w, w + W, ...; grain hands them back in order.
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(1, prefetch // num_workers)))
  return iter(dataset)


def train_batches(domain: Domain, *, global_batch_size: int, preprocess: PreprocessFn,
                  seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1, num_threads: int = 2,
                  prefetch: int = 4, num_workers: int = 0) -> Iterator[Batch]:
  """This process's share of the global batches of steps `start_step, ...`.

  Args:
    domain: the examples.
    global_batch_size: examples per step over all processes.
    preprocess: per-example function `(example, rng) -> example`.
    seed: data seed (order and augmentation).
    start_step: the first step to produce (for resuming).
    process_index: `jax.process_index()`.
    process_count: `jax.process_count()`.
    num_threads: background threads assembling batches (0: in the caller's thread).
    prefetch: batches assembled ahead.
    num_workers: worker processes assembling batches, each with `num_threads`
      threads (0: none, all in this process).

  Yields:
    `{'image': (b, H, W, C) float32, 'label': (b,) int32, 'index': (b,) int32}`
    with `b = global_batch_size / process_count`; `index` is each example's
    position in the split (for methods that keep per-example state), and a
    multi-view preprocessing (`preprocess.multi_view`) adds its other views.
  """
  n = len(domain)
  if n == 0:
    raise ValueError(f"{domain.name}:{domain.split} has no examples")
  local = _local_batch_size(global_batch_size, process_count)

  def make_batch(step: int) -> Batch:
    start = step * global_batch_size + process_index * local
    positions = np.arange(start, start + local, dtype=np.int64)
    indices = stream_indices(positions, seed=seed, num_examples=n)
    batch = _stack(_preprocess_all(_read(domain.source, indices), positions, preprocess, seed))
    batch["index"] = indices.astype(np.int32)
    return batch

  steps = grain.MapDataset.range(start_step, 2**62).map(make_batch)
  return _iterate(steps, num_threads, prefetch, num_workers)


def domain_choices(seed: int, step: int, num_domains: int, per_step: int) -> np.ndarray:
  """The labelled domains step `step` draws from (sorted): `per_step` of
  `num_domains`, without replacement, a pure function of the seed and step
  (TLlib's `RandomDomainSampler` draws its domains anew for every batch)."""
  rng = np.random.default_rng((seed, step))
  return np.sort(rng.choice(num_domains, per_step, replace=False))


@functools.lru_cache(maxsize=4)
def _draw_counts(seed: int, num_domains: int, per_step: int, steps: int) -> np.ndarray:
  """`(steps + 1, num_domains)`: how often each domain was drawn before each step."""
  counts = np.zeros((steps + 1, num_domains), np.int64)
  for step in range(steps):
    counts[step + 1] = counts[step]
    counts[step + 1, domain_choices(seed, step, num_domains, per_step)] += 1
  return counts


def draws_before(seed: int, step: int, num_domains: int, per_step: int) -> np.ndarray:
  """`(num_domains,)`: how many batches each domain gave to steps `0 .. step-1`."""
  # Tables in whole blocks of steps, so that consecutive steps share one.
  block = 4096
  steps = block * (step // block + 1)
  return _draw_counts(seed, num_domains, per_step, steps)[step]


def domain_subset_batches(domains: Sequence[Domain], *, batch_size_per_domain: int,
                          domains_per_step: int, preprocess: PreprocessFn, seeds: Sequence[int],
                          choice_seed: int, start_step: int = 0, process_index: int = 0,
                          process_count: int = 1, num_threads: int = 2, prefetch: int = 4,
                          num_workers: int = 0) -> Iterator[Batch]:
  """Batches of `domains_per_step` of the labelled `domains`, drawn anew each
  step (`domain_choices`), `batch_size_per_domain` examples from each.

  Domain d's examples come from its own stream (seed `seeds[d]`, as
  `train_batches`) and continue where its previous draw stopped: its k-th
  draw reads stream positions `[k B, (k+1) B)`. So every domain visits its
  examples without replacement, epoch after epoch, and the batch of a step is
  a pure function of the seeds and the step (what a resumed run needs). Each
  process reads its block of every chosen domain's positions; `domain`
  holds each example's position in `domains`.
  """
  if not 0 < domains_per_step <= len(domains):
    raise ValueError(f"config.data.domains_per_step={domains_per_step} must be in "
                     f"1..{len(domains)} (the labelled domains)")
  local = _local_batch_size(batch_size_per_domain, process_count)
  for domain in domains:
    if not len(domain):
      raise ValueError(f"{domain.name}:{domain.split} has no examples")

  def make_batch(step: int) -> Batch:
    chosen = domain_choices(choice_seed, step, len(domains), domains_per_step)
    before = draws_before(choice_seed, step, len(domains), domains_per_step)
    parts = []
    for d in chosen:
      start = before[d] * batch_size_per_domain + process_index * local
      positions = np.arange(start, start + local, dtype=np.int64)
      indices = stream_indices(positions, seed=seeds[d], num_examples=len(domains[d]))
      examples = _read(domains[d].source, indices)
      part = _stack(_preprocess_all(examples, positions, preprocess, seeds[d]))
      part["index"] = indices.astype(np.int32)
      part["domain"] = np.full(local, d, np.int32)
      parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  steps = grain.MapDataset.range(start_step, 2**62).map(make_batch)
  return _iterate(steps, num_threads, prefetch, num_workers)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def eval_batches(domain: Domain, *, global_batch_size: int, preprocess: PreprocessFn,
                 process_index: int = 0, process_count: int = 1,
                 num_threads: int = 2, prefetch: int = 4, num_workers: int = 0) -> Iterator[Batch]:
  """One pass over `domain` in order, padded to whole global batches.

  Every example appears exactly once with `mask` 1; padding repeats examples
  with `mask` 0, so metrics must be weighted by `mask`. `index` is the
  example's index in the split (for padding, one past the end and beyond).
  Arguments as for `train_batches`.
  """
  n = len(domain)
  if n == 0:
    raise ValueError(f"{domain.name}:{domain.split} has no examples")
  local = _local_batch_size(global_batch_size, process_count)

  def make_batch(batch: int) -> Batch:
    start = batch * global_batch_size + process_index * local
    positions = np.arange(start, start + local, dtype=np.int64)
    # Evaluation preprocessing is deterministic; the generator is there for the API.
    examples = _preprocess_all(_read(domain.source, positions % n), positions, preprocess, 0)
    out = _stack(examples)
    out["mask"] = (positions < n).astype(np.float32)
    out["index"] = positions
    return out

  batches = grain.MapDataset.range(num_eval_batches(n, global_batch_size)).map(make_batch)
  return _iterate(batches, num_threads, prefetch, num_workers)
