"""The embedded Digits -> Digits-M datasets: deterministic, disjoint, well-formed."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from tljax.data import open_domain


def _file_hashes(data_dir: str, name: str) -> dict[str, str]:
  version_dir = os.path.join(data_dir, name, "1.0.0")
  return {f: hashlib.sha256(open(os.path.join(version_dir, f), "rb").read()).hexdigest()
          for f in sorted(os.listdir(version_dir)) if f.endswith(("array_record-00000-of-00001", ".json"))}


@pytest.mark.parametrize("name", ["digits", "digits_m"])
def test_build_is_byte_deterministic(name, digits_data_dir, tmp_path):
  # Built again in another process: protobuf map order, for one, differs
  # between processes, so a same-process rebuild would not prove much.
  subprocess.run([sys.executable, "-c", "import sys; from tljax.data import open_domain; "
                  "open_domain(sys.argv[1], 'train', data_dir=sys.argv[2])", name, str(tmp_path)],
                 check=True, capture_output=True, timeout=300)
  first, second = _file_hashes(digits_data_dir, name), _file_hashes(str(tmp_path), name)
  assert any("array_record" in f for f in first)
  assert first == second


def _all(name, data_dir):
  out = {}
  for split in ("train", "test"):
    domain = open_domain(name, split, data_dir=data_dir)
    examples = [domain.source[i] for i in range(len(domain))]
    out[split] = examples
  return out


def test_domains_are_disjoint_and_cover_all_digits(digits_data_dir):
  import sklearn.datasets

  source, target = _all("digits", digits_data_dir), _all("digits_m", digits_data_dir)
  source_ids = [e["digit_index"] for split in source.values() for e in split]
  target_ids = [e["digit_index"] for split in target.values() for e in split]
  assert len(set(source_ids)) == len(source_ids) and len(set(target_ids)) == len(target_ids)
  assert not set(source_ids) & set(target_ids)
  assert len(source_ids) + len(target_ids) == 1797
  # Labels agree with scikit-learn's for the same underlying digit.
  labels = sklearn.datasets.load_digits().target
  for split in (*source.values(), *target.values()):
    assert all(labels[e["digit_index"]] == e["label"] for e in split)


def test_images_follow_the_recipe(digits_data_dir):
  import skimage.transform
  import sklearn.datasets

  digits = sklearn.datasets.load_digits()
  source = open_domain("digits", "train", data_dir=digits_data_dir)
  target = open_domain("digits_m", "train", data_dir=digits_data_dir)
  assert source.class_names == target.class_names == tuple(str(i) for i in range(10))
  example = source.source[0]
  image = example["image"]
  assert image.shape == (28, 28, 3) and image.dtype == np.uint8
  assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
  expected = skimage.transform.resize(digits.images[example["digit_index"]] / 16.0, (28, 28),
                                      order=1, anti_aliasing=False, mode="edge")
  np.testing.assert_allclose(image[..., 0] / 255.0, np.clip(expected, 0, 1), atol=1 / 255 + 1e-9)
  # Target images are coloured: channels differ and the mean colour varies across images.
  target_images = np.stack([target.source[i]["image"] for i in range(50)]).astype(np.float64)
  assert np.abs(target_images[..., 0] - target_images[..., 1]).mean() > 5
  assert target_images.mean(axis=(1, 2)).std(axis=0).min() > 5


def test_split_sizes_are_stratified(digits_data_dir):
  for name in ("digits", "digits_m"):
    train = open_domain(name, "train", data_dir=digits_data_dir)
    test = open_domain(name, "test", data_dir=digits_data_dir)
    train_counts = np.bincount([train.source[i]["label"] for i in range(len(train))], minlength=10)
    test_counts = np.bincount([test.source[i]["label"] for i in range(len(test))], minlength=10)
    assert 880 <= len(train) + len(test) <= 920
    np.testing.assert_allclose(train_counts / (train_counts + test_counts), 2 / 3, atol=0.02)


def test_unknown_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*digits_m"):
    open_domain("nope", "train", data_dir=str(tmp_path))
