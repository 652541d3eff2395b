"""The synthetic -> real digits task: synth_digits -> digits_full / digits_m_full.

The source is built in its `small` config (the first 1,000 / 200 examples of
the default config's splits) to keep the tests to seconds.
"""

import collections
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from tljax.data import digits
from tljax.data import open_domain
from tljax.data import synth_digits

SOURCE = "synth_digits/small"
TARGETS = ("digits_full", "digits_m_full")


def _file_hashes(version_dir: str) -> dict[str, str]:
  return {f: hashlib.sha256(open(os.path.join(version_dir, f), "rb").read()).hexdigest()
          for f in sorted(os.listdir(version_dir))
          if f.endswith(("array_record-00000-of-00001", ".json"))}


def _version_dir(data_dir: str, name: str) -> str:
  return os.path.join(data_dir, *name.split("/"), "1.0.0")


def _examples(name: str, split: str, data_dir: str) -> list[dict]:
  domain = open_domain(name, split, data_dir=data_dir)
  return [domain.source[i] for i in range(len(domain))]


@pytest.fixture(scope="module")
def synth_data_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in (SOURCE, *TARGETS):
    open_domain(name, "train", data_dir=data_dir)
  return data_dir


def test_fonts_are_those_that_draw_digits():
  names = [os.path.basename(f) for f in synth_digits.digit_fonts()]
  assert names == sorted(names)
  assert {"DejaVuSans.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "cmr10.ttf",
          "cmmi10.ttf", "cmtt10.ttf"} <= set(names)
  assert not {"cmsy10.ttf", "cmex10.ttf", "LastResortHE-Regular.ttf",
              "DejaVuSansDisplay.ttf"} & set(names)
  assert not [n for n in names if n.startswith(("STIXSiz", "STIXNonUni"))]
  # Every kept font draws ten distinct, non-empty glyphs ...
  for font in synth_digits.digit_fonts():
    glyphs = [synth_digits._glyph(font, d, stroke=0) for d in range(10)]
    assert all(g.size and g.max() > 0.5 for g in glyphs), font
    keys = {(g.shape, g.tobytes()) for g in glyphs}
    assert len(keys) == 10, font
  # ... which the Last Resort font, for one, does not: it has a '0'..'9' in its
  # character map but draws the same box for each.
  font_dir = os.path.dirname(synth_digits.digit_fonts()[0])
  boxes = {synth_digits._glyph(os.path.join(font_dir, "LastResortHE-Regular.ttf"), d, 0).tobytes()
           for d in range(10)}
  assert len(boxes) == 1


def test_builds_are_byte_deterministic(synth_data_dir, tmp_path):
  # Built again in another process: protobuf map order, for one, differs
  # between processes, so a same-process rebuild would not prove much.
  subprocess.run([sys.executable, "-c", "import sys; from tljax.data import open_domain; "
                  "[open_domain(n, 'test', data_dir=sys.argv[1]) for n in sys.argv[2:]]",
                  str(tmp_path), SOURCE, *TARGETS],
                 check=True, capture_output=True, timeout=300)
  for name in (SOURCE, *TARGETS):
    first = _file_hashes(_version_dir(synth_data_dir, name))
    second = _file_hashes(_version_dir(str(tmp_path), name))
    assert sum("array_record" in f for f in first) == 2, name
    assert first == second, name


def test_source_is_balanced_by_class_and_font(synth_data_dir):
  fonts = [os.path.basename(f) for f in synth_digits.digit_fonts()]
  for split, size in (("train", 1_000), ("test", 200)):
    examples = _examples(SOURCE, split, synth_data_dir)
    assert len(examples) == size
    np.testing.assert_array_equal(np.bincount([e["label"] for e in examples], minlength=10),
                                  np.full(10, size // 10))
    pairs = collections.Counter((e["label"], e["font"].decode()) for e in examples)
    assert {font for _, font in pairs} <= set(fonts)
    if split == "train":  # 100 of each digit, more than there are fonts
      assert {font for _, font in pairs} == set(fonts)
    for label in range(10):
      counts = [pairs[(label, font)] for font in fonts]
      assert max(counts) - min(counts) <= 1, (split, label, counts)


def test_source_images_are_the_renderer_s(synth_data_dir):
  fonts = synth_digits.digit_fonts()
  examples = {split: _examples(SOURCE, split, synth_data_dir) for split in ("train", "test")}
  for split, split_examples in examples.items():
    images = np.stack([e["image"] for e in split_examples])
    assert images.shape == (len(split_examples), 28, 28, 3) and images.dtype == np.uint8
    # A digit stands out of its background in every image, in colours that vary.
    assert images.reshape(len(images), -1).astype(np.float64).std(axis=1).min() > 10
    assert images.mean(axis=(1, 2)).std(axis=0).min() > 30
  # Held out: no image of `test` is one of `train`.
  train_bytes = {e["image"].tobytes() for e in examples["train"]}
  assert not train_bytes & {e["image"].tobytes() for e in examples["test"]}
  # Example k is render(k) whatever the split's size, so `small` is the start of
  # the default config.
  stored = collections.Counter((e["image"].tobytes(), int(e["label"])) for e in examples["test"])
  rendered = collections.Counter()
  for k in range(200):
    image, label, _ = synth_digits.render(fonts, "test", k)
    rendered[(image.tobytes(), label)] += 1
  assert stored == rendered


@pytest.mark.parametrize("name", TARGETS)
def test_target_splits_cover_every_digit_once(name, synth_data_dir):
  import sklearn.datasets

  labels = sklearn.datasets.load_digits().target
  splits = {s: _examples(name, s, synth_data_dir) for s in ("train", "test", "all")}
  ids = {s: [int(e["digit_index"]) for e in ex] for s, ex in splits.items()}
  assert sorted(ids["all"]) == list(range(1797))
  assert not set(ids["train"]) & set(ids["test"])
  assert sorted(ids["train"] + ids["test"]) == list(range(1797))
  for examples in splits.values():
    assert all(labels[e["digit_index"]] == e["label"] for e in examples)
  # Stratified: every class splits 2/3 : 1/3, rounded.
  train_counts = np.bincount(labels[ids["train"]], minlength=10)
  np.testing.assert_array_equal(train_counts, np.round(np.bincount(labels) * 2 / 3))


def test_target_images_follow_the_recipe(synth_data_dir):
  images, _ = digits._upscaled_digits()
  full = _examples("digits_full", "all", synth_data_dir)
  blended = _examples("digits_m_full", "all", synth_data_dir)
  grey = digits.grey_to_rgb(images)
  for example in full:
    assert example["image"].shape == (28, 28, 3) and example["image"].dtype == np.uint8
    np.testing.assert_array_equal(example["image"], grey[example["digit_index"]])
  # Each digit's crop is drawn in digit order over all 1,797, whatever the split.
  expected = digits.blend_with_photos(images, np.random.default_rng(digits._BLEND_SEED))
  for example in blended:
    np.testing.assert_array_equal(example["image"], expected[example["digit_index"]])
  stacked = np.stack([e["image"] for e in blended]).astype(np.float64)
  assert np.abs(stacked[..., 0] - stacked[..., 1]).mean() > 5
