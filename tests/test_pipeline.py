"""Input pipeline: reproducible, resumable, process-sharded, lossless evaluation."""

import numpy as np
import pytest

from tljax.data import open_domain
from tljax.data.pipeline import eval_batches, train_batches
from tljax.data.preprocess import get_preprocess


@pytest.fixture(scope="module")
def domain(digits_data_dir):
  return open_domain("digits", "test", data_dir=digits_data_dir, cache=True)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_same_seed_same_batches_other_seed_differs(domain):
  pp = get_preprocess("digits", random_shift=2)
  a = _take(train_batches(domain, global_batch_size=8, preprocess=pp, seed=3, num_threads=2), 4)
  b = _take(train_batches(domain, global_batch_size=8, preprocess=pp, seed=3, num_threads=0), 4)
  c = _take(train_batches(domain, global_batch_size=8, preprocess=pp, seed=4), 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not all(np.array_equal(x["label"], z["label"]) for x, z in zip(a, c))


def test_resume_continues_the_stream(domain):
  pp = get_preprocess("digits", random_shift=2)
  full = _take(train_batches(domain, global_batch_size=8, preprocess=pp, seed=0), 6)
  resumed = _take(train_batches(domain, global_batch_size=8, preprocess=pp, seed=0, start_step=4), 2)
  for x, y in zip(full[4:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_epochs_are_permutations(domain):
  pp = get_preprocess("digits")
  n = len(domain)
  batches = _take(train_batches(domain, global_batch_size=n, preprocess=pp, seed=0), 2)
  for batch in batches:
    assert sorted(batch["image"].reshape(n, -1).sum(1).tolist()) == sorted(
        (pp(domain.source[i], None)["image"].sum() for i in range(n)))


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_assemble_the_global_batch(domain, process_count):
  pp = get_preprocess("digits", random_shift=2)
  full = _take(train_batches(domain, global_batch_size=8, preprocess=pp, seed=1), 3)
  shards = [_take(train_batches(domain, global_batch_size=8, preprocess=pp, seed=1,
                                process_index=p, process_count=process_count), 3)
            for p in range(process_count)]
  for step in range(3):
    assembled = np.concatenate([shards[p][step]["image"] for p in range(process_count)])
    np.testing.assert_array_equal(assembled, full[step]["image"])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_sees_every_example_once(domain, process_count):
  pp = get_preprocess("digits")
  seen = []
  for p in range(process_count):
    for batch in eval_batches(domain, global_batch_size=64, preprocess=pp,
                              process_index=p, process_count=process_count):
      assert batch["image"].shape[0] == 64 // process_count
      seen += batch["index"][batch["mask"] == 1].tolist()
      assert np.all(batch["index"][batch["mask"] == 0] >= len(domain))
  assert sorted(seen) == list(range(len(domain)))


def test_indivisible_batch_is_an_error(domain):
  with pytest.raises(ValueError, match="not divisible by the number of processes"):
    next(train_batches(domain, global_batch_size=9, preprocess=get_preprocess("digits"),
                       seed=0, process_count=2))
