"""Regression across domains: DD's and RSD's losses against PyTorch
restatements of TLlib's, the regression head, the embedded `sprites` dataset
and the dSprites / MPI3D / image_csv builders, the task checks, and short
runs of ERM, DANN, DD and RSD on the embedded task (finite, resumed bit for
bit, one device = two).

The runs use the `_small` configs of two sprites domains (400 train / 200 test
images) and a narrow network; compilations are shared through JAX's
persistent cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from conftest import REPO, flat, set_fields, tiny_config, train_lines
from tljax import losses, sweep, train
from tljax.data import disentanglement, image_files, open_domain, sprites
from tljax.methods import create_method
from tljax.models.heads import BatchNormMLPHead
from tljax.workdir import state_at

sys.path.insert(0, str(REPO))  # the configs package
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top

rsd_module = importlib.import_module("tljax.losses.rsd")

SOURCE, TARGET = "sprites/color_small", "sprites/noisy_small"


def _random(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape)


def _one_line(error) -> bool:
  return "\n" not in str(error.value)


# ----------------------------------------------------------------------------
# Losses against PyTorch restatements of TLlib's (float64).
# ----------------------------------------------------------------------------


def _torch_tllib_dd(y_s, y_s_adv, y_t, y_t_adv, margin, loss_function):
  """TLlib's `RegressionMarginDisparityDiscrepancy`: per-element disparities
  `loss_function(y_adv, y.detach(), reduction='none')`, the source's times
  `-margin`, summed elementwise with the target's, then averaged."""
  source = -margin * loss_function(y_s_adv, y_s.detach(), reduction="none")
  target = loss_function(y_t_adv, y_t.detach(), reduction="none")
  return (source + target).mean()


@pytest.mark.parametrize("disparity", ["l1", "l2"])
def test_regression_mdd_matches_tllib(disparity):
  arrays = [_random(i, 12, 3) for i in range(4)]
  tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
  function = (torch.nn.functional.l1_loss if disparity == "l1"
              else torch.nn.functional.mse_loss)
  expected = _torch_tllib_dd(*tensors, margin=1.7, loss_function=function)
  expected.backward()
  with jax.enable_x64(True):
    value, grads = jax.value_and_grad(
        lambda *a: losses.regression_mdd(*a, margin=1.7, disparity=disparity),
        argnums=(0, 1, 2, 3))(*[jnp.asarray(a) for a in arrays])
    np.testing.assert_allclose(value, expected.item(), rtol=1e-12)
    for grad, tensor in zip(grads, tensors):
      reference = tensor.grad.numpy() if tensor.grad is not None else np.zeros_like(grad)
      np.testing.assert_allclose(grad, reference, rtol=1e-12, atol=1e-15)
  # The main head's outputs are constants (`detach`): no gradient reaches them.
  assert not np.any(grads[0]) and not np.any(grads[2])
  with pytest.raises(ValueError, match="'l1' or 'l2'"):
    losses.regression_mdd(*arrays, margin=1.0, disparity="huber")


def _torch_tllib_rsd(f_s, f_t, trade_off):
  """TLlib's `RepresentationSubspaceDistance`: the bases of the two feature
  matrices' column spaces, the SVD of their product (the principal angles),
  the L1 norm of the sines plus `trade_off` times the 2-norm (over all
  entries) of the difference of the absolute rotations."""
  basis_s = torch.linalg.svd(f_s.t(), full_matrices=False)[0]
  basis_t = torch.linalg.svd(f_t.t(), full_matrices=False)[0]
  rotation_s, cosine, rotation_t_h = torch.linalg.svd(basis_s.t() @ basis_t,
                                                       full_matrices=False)
  sine = torch.sqrt(1 - cosine**2)
  distance = torch.norm(sine, 1)
  mismatch = torch.norm(torch.abs(rotation_s) - torch.abs(rotation_t_h.t()), 2)
  return distance + trade_off * mismatch, distance, mismatch


# Batch x features, features at least twice the batch: narrower, two batches'
# subspaces must share directions (cosines of 1), where TLlib's sine is NaN.
@pytest.mark.parametrize("shape", [(12, 30), (6, 64)])
def test_rsd_matches_tllib(shape):
  f_s = np.maximum(_random(0, *shape), 0) + 0.05 * _random(1, *shape)
  f_t = np.maximum(_random(2, *shape) + 0.3, 0)
  tensors = [torch.tensor(x, requires_grad=True) for x in (f_s, f_t)]
  expected, distance, mismatch = _torch_tllib_rsd(*tensors, trade_off=0.1)
  expected.backward()
  with jax.enable_x64(True):
    value, grads = jax.value_and_grad(lambda a, b: losses.rsd(a, b, trade_off=0.1),
                                      argnums=(0, 1))(jnp.asarray(f_s), jnp.asarray(f_t))
    parts = losses.subspace_distance(jnp.asarray(f_s), jnp.asarray(f_t))
  np.testing.assert_allclose(value, expected.item(), rtol=1e-10)
  np.testing.assert_allclose(parts, [distance.item(), mismatch.item()], rtol=1e-10)
  # The regularised SVD gradient equals PyTorch's where singular values are apart.
  for grad, tensor in zip(grads, tensors):
    np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_rsd_gradient_stays_finite_where_tllibs_is_not():
  # Batches spanning the same subspace: every cosine is 1 (up to rounding),
  # repeated, and TLlib's sines or the rotations' gradient (BMP) are not finite.
  f_s = np.maximum(_random(3, 16, 40), 0)
  f_t = f_s * 1.01
  tensors = [torch.tensor(x, requires_grad=True) for x in (f_s, f_t)]
  value = _torch_tllib_rsd(*tensors, trade_off=0.1)[0]
  value.backward()
  assert not (np.isfinite(value.item()) and np.all(np.isfinite(tensors[0].grad.numpy())))
  with jax.enable_x64(True):
    value, grads = jax.value_and_grad(lambda a, b: losses.rsd(a, b, trade_off=0.1),
                                      argnums=(0, 1))(jnp.asarray(f_s), jnp.asarray(f_t))
  assert value < 1e-3  # the same subspace: no distance, no mismatch
  assert all(np.all(np.isfinite(g)) for g in grads)
  # Float32 rounding puts some cosines above 1, where TLlib's sine is NaN.
  value32 = losses.rsd(f_s.astype(np.float32), f_t.astype(np.float32))
  assert np.isfinite(value32)
  with pytest.raises(ValueError, match="batches of one shape"):
    losses.rsd(f_s.astype(np.float32), f_t[:8].astype(np.float32))


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)])
def test_regularised_svd_gradient_equals_jaxs_where_defined(shape):
  x = _random(5, *shape)
  k = min(shape)
  weights = [_random(6, shape[0], k), _random(7, k), _random(8, k, shape[1])]

  def objective(svd):
    def fn(x):
      u, s, vh = svd(x)  # signs of the vectors are free: weigh their absolute values
      return (jnp.sum(jnp.abs(u) * weights[0]) + jnp.sum(s * weights[1])
              + jnp.sum(jnp.abs(vh) * weights[2]))
    return fn

  with jax.enable_x64(True):
    ours = jax.grad(objective(rsd_module._svd))(jnp.asarray(x))  # pylint: disable=protected-access
    native = jax.grad(objective(lambda m: jnp.linalg.svd(m, full_matrices=False)))(jnp.asarray(x))
  np.testing.assert_allclose(ours, native, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------
# The regression head.
# ----------------------------------------------------------------------------


def test_bn_mlp_head_is_tllibs_conv_head_on_pooled_features():
  """TLlib's `ImageRegressor` head on a 1x1 feature map, in PyTorch, with the
  centre taps of its convolutions copied into `BatchNormMLPHead`."""
  torch.manual_seed(0)
  width, factors = 6, 3
  head = torch.nn.Sequential(
      torch.nn.Conv2d(5, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
      torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, factors),
      torch.nn.Sigmoid()).double()
  features = _random(9, 10, 5)
  expected = head(torch.tensor(features)[:, :, None, None]).detach().numpy()
  ours = BatchNormMLPHead(factors, width)
  variables = ours.init(jax.random.key(0), jnp.zeros((2, 5)), train=False)
  params = dict(variables["params"])
  for i, conv in enumerate((head[0], head[3])):
    params[f"linear{i}"] = {"kernel": conv.weight.detach().numpy()[:, :, 1, 1].T,
                            "bias": conv.bias.detach().numpy()}
  params["output"] = {"kernel": head[8].weight.detach().numpy().T,
                      "bias": head[8].bias.detach().numpy()}
  with jax.enable_x64(True):
    out, _ = ours.apply({**variables, "params": params}, jnp.asarray(features), train=True,
                        mutable=["batch_stats"])
    np.testing.assert_allclose(jax.nn.sigmoid(out), expected, rtol=1e-6)


# ----------------------------------------------------------------------------
# The embedded sprites dataset.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sprites_data_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in (SOURCE, TARGET):
    open_domain(name, "train", data_dir=data_dir)
  return data_dir


def _area_centroid(mask: np.ndarray) -> tuple[float, float, float]:
  """Covered area (pixels) and its centroid (x, y) in pixel units."""
  ys, xs = np.mgrid[:mask.shape[0], :mask.shape[1]] + 0.5
  area = mask.sum()
  return area, (xs * mask).sum() / area, (ys * mask).sum() / area


def test_sprite_geometry_follows_its_factors():
  side = sprites.IMAGE_SIZE
  for scale, angle, x, y in [(1.0, 0.0, 0.5, 0.5), (0.5, 0.7, 0.1, 0.9), (0.8, 2.0, 1.0, 0.0)]:
    centre = (sprites._MARGIN + np.array([x, y]) * (1 - 2 * sprites._MARGIN)) * side  # pylint: disable=protected-access
    half = sprites._HALF_SIZE * scale * side  # pylint: disable=protected-access
    area, cx, cy = _area_centroid(sprites.coverage("square", scale, angle, x, y))
    np.testing.assert_allclose([cx, cy], centre, atol=0.05)
    # 4x4 samples a pixel: each side is right to a quarter pixel.
    np.testing.assert_allclose(area, (2 * half)**2, rtol=0.06)
    area, cx, cy = _area_centroid(sprites.coverage("ellipse", scale, angle, x, y))
    np.testing.assert_allclose([cx, cy], centre, atol=0.05)
    np.testing.assert_allclose(area, np.pi * half * half / 2, rtol=0.06)


def test_sprites_images_hold_their_labels(sprites_data_dir):
  # The binary look: the image is the coverage, so its centroid is the position.
  domain = open_domain("sprites/binary_small", "test", data_dir=sprites_data_dir)
  assert domain.factor_names == sprites.FACTOR_NAMES and domain.label_kind == "regression"
  side = sprites.IMAGE_SIZE
  symmetric = 0
  for i in range(len(domain)):
    example = domain.source[i]
    scale, x, y = example["label"]
    assert 0.5 <= scale <= 1 and 0 <= x <= 1 and 0 <= y <= 1
    if sprites.SHAPES[example["shape"]] == "heart":
      continue  # not point-symmetric: its centroid is not its centre
    symmetric += 1
    _, cx, cy = _area_centroid(example["image"][..., 0] / 255.0)
    centre = (sprites._MARGIN + np.array([x, y]) * (1 - 2 * sprites._MARGIN)) * side  # pylint: disable=protected-access
    # Shapes at the border lose a little area to the frame.
    np.testing.assert_allclose([cx, cy], centre, atol=0.6)
  assert symmetric > 100


def test_sprites_domains_differ_in_look_only(sprites_data_dir):
  color = open_domain(SOURCE, "train", data_dir=sprites_data_dir, cache=True)
  noisy = open_domain(TARGET, "train", data_dir=sprites_data_dir, cache=True)
  assert len(color) == len(noisy) == 400
  color_images = np.stack([color.source[i]["image"] for i in range(50)]).astype(float)
  noisy_images = np.stack([noisy.source[i]["image"] for i in range(50)]).astype(float)
  # Colour on black: most pixels are 0; noise: almost none are.
  assert np.mean(color_images == 0) > 0.8 and np.mean(noisy_images == 0) < 0.05
  # The small config's examples are the first of the full config's (stored in
  # TFDS's hashed order).
  labels = np.stack([color.source[i]["label"] for i in range(len(color))])
  for k in (0, 3, 399):
    image, factors, _, _ = sprites.render("color", "train", k)
    (index,) = np.flatnonzero(np.all(labels == factors, axis=1))
    np.testing.assert_array_equal(color.source[index]["image"], image)


# ----------------------------------------------------------------------------
# dSprites, MPI3D, image_csv: from files in the published layouts.
# ----------------------------------------------------------------------------


def _write_fake_dsprites(folder) -> np.ndarray:
  """A 60-row npz in dSprites' layout (and a Scream); returns its latents_values."""
  rng = np.random.default_rng(0)
  n = 60
  imgs = np.zeros((n, 64, 64), np.uint8)
  latents = np.zeros((n, 6))
  for i in range(n):
    size, x, y = rng.integers(4, 12), rng.integers(2, 48), rng.integers(2, 48)
    imgs[i, y:y + size, x:x + size] = 1
    latents[i] = [1, rng.integers(1, 4), size / 12, rng.uniform(0, 6.2), x / 48, y / 48]
  np.savez_compressed(folder / disentanglement.DSPRITES_FILE, imgs=imgs,
                      latents_values=latents, latents_classes=np.zeros((n, 6), np.int64))
  scream = (rng.random((420, 300, 3)) * 255).astype(np.uint8)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(scream).save(folder / disentanglement.SCREAM_FILE)
  return latents


def _mpi3d_image(row: int) -> np.ndarray:
  return np.broadcast_to(np.array([row % 251, row // 251, 7], np.uint8), (64, 64, 3))


def _write_fake_mpi3d(folder) -> None:
  """The first 1,600 rows of MPI3D's grid (both axes, every value) in its layout."""
  images = np.stack([_mpi3d_image(r) for r in range(1600)])
  np.savez(folder / "mpi3d_toy.npz", images=images)


@pytest.fixture(scope="module")
def array_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("manual")
  (folder / "dsprites").mkdir()
  latents = _write_fake_dsprites(folder / "dsprites")
  _write_fake_mpi3d(folder)
  return folder, latents


def _all(name, split, data_dir, manual_dir):
  domain = open_domain(name, split, data_dir=data_dir, manual_dir=str(manual_dir))
  return [domain.source[i] for i in range(len(domain))], domain


def test_dsprites_domains_from_the_published_file(array_files, tmp_path):
  manual, latents = array_files
  data_dir = str(tmp_path)
  imgs = np.load(manual / "dsprites" / disentanglement.DSPRITES_FILE)["imgs"]
  rows_of = {}
  for look in ("color", "noisy", "scream"):
    train_examples, domain = _all(f"dsprites/{look}", "train", data_dir, manual)
    test_examples, _ = _all(f"dsprites/{look}", "test", data_dir, manual)
    assert domain.factor_names == ("scale", "position x", "position y")
    assert (len(train_examples), len(test_examples)) == (48, 12)
    rows = [e["row"] for e in train_examples + test_examples]
    assert sorted(rows) == list(range(60))  # every row of a small file, once
    rows_of[look] = [e["row"] for e in test_examples]
    for example in train_examples + test_examples:
      np.testing.assert_allclose(example["label"], latents[example["row"], [2, 4, 5]],
                                 rtol=1e-6)
      sprite = imgs[example["row"]] == 1
      image = example["image"].astype(int)
      if look == "color":  # the sprite in a colour of channels in [0.5, 1], black around it
        assert np.all(image[~sprite] == 0) and np.all(image[sprite] >= 127)
        assert len(np.unique(image[sprite], axis=0)) == 1
      elif look == "noisy":  # white over noise
        assert np.all(image[sprite] == 255) and image[~sprite].std() > 50
  # Each domain draws its own subset.
  assert rows_of["color"] != rows_of["noisy"]


def test_mpi3d_labels_are_the_axes_of_the_row(array_files, tmp_path):
  manual, _ = array_files
  examples, domain = _all("mpi3d/toy", "train", str(tmp_path), manual)
  assert domain.factor_names == ("horizontal axis", "vertical axis")
  assert len(examples) == 1280
  for example in examples[::37]:
    row = example["row"]
    np.testing.assert_allclose(example["label"], [(row // 40) % 40 / 39, row % 40 / 39],
                               rtol=1e-6)
    np.testing.assert_array_equal(example["image"], _mpi3d_image(row))


def test_npz_rows_are_read_without_loading_the_array(tmp_path):
  array = np.arange(7 * 3 * 2, dtype=np.int16).reshape(7, 3, 2)
  np.savez(tmp_path / "stored.npz", a=array)
  np.savez_compressed(tmp_path / "compressed.npz", a=array)
  for name in ("stored.npz", "compressed.npz"):
    rows = [0, 2, 3, 6]
    read = list(disentanglement.read_npz_rows(tmp_path / name, "a", rows))
    assert [r for r, _ in read] == rows
    np.testing.assert_array_equal(np.stack([x for _, x in read]), array[rows])
    with pytest.raises(ValueError, match="has no array 'b' \\(it has a\\)"):
      list(disentanglement.read_npz_rows(tmp_path / name, "b", rows))


def test_missing_files_name_what_to_put_where(array_files, tmp_path):
  with pytest.raises(image_files.DatasetFilesNotFoundError,
                     match=disentanglement.DSPRITES_FILE):
    open_domain("dsprites/color", "train", data_dir=str(tmp_path / "a"),
                manual_dir=str(tmp_path))
  manual, _ = array_files
  lone = tmp_path / "lone"
  lone.mkdir()
  shutil.copy(manual / "dsprites" / disentanglement.DSPRITES_FILE, lone)
  with pytest.raises(image_files.DatasetFilesNotFoundError, match="scream.jpg"):
    open_domain("dsprites/scream", "train", data_dir=str(tmp_path / "b"), manual_dir=str(lone))


def _version_files(data_dir, name):
  folder = os.path.join(data_dir, *name.split("/"), "1.0.0")
  return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
          for f in sorted(os.listdir(folder)) if "array_record" in f}


def test_builds_are_byte_deterministic(array_files, tmp_path):
  manual, _ = array_files
  names = ("sprites/photo_small", "dsprites/scream", "mpi3d/toy")
  first = str(tmp_path / "first")
  # Built twice in other processes: protobuf map order, for one, differs between processes.
  for data_dir in (first, str(tmp_path / "second")):
    subprocess.run([sys.executable, "-c", "import sys; from tljax.data import open_domain; "
                    "[open_domain(n, 'test', data_dir=sys.argv[1], manual_dir=sys.argv[2]) "
                    "for n in sys.argv[3:]]", data_dir, str(manual), *names],
                   check=True, capture_output=True, timeout=600)
  for name in names:
    files = _version_files(first, name)
    assert sum("array_record" in f for f in files) == 2, name
    assert files == _version_files(str(tmp_path / "second"), name), name


def _write_csv(folder, text: str, images=("a.png", "b.png")):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  (folder / "img").mkdir(exist_ok=True)
  for i, name in enumerate(images):
    Image.fromarray(np.full((9, 7, 3), 40 * i, np.uint8)).save(folder / "img" / name)
  (folder / "targets.csv").write_text(text)
  return f"image_csv:{folder / 'targets.csv'}"


def test_image_csv_domain(tmp_path):
  name = _write_csv(tmp_path, "path,scale,position x\nimg/a.png,0.5,0.25\nimg/b.png,1,-2e-1\n")
  domain = open_domain(name, "train", data_dir=str(tmp_path / "tfds"), cache=True)
  assert domain.factor_names == ("scale", "position x") and domain.label_kind == "regression"
  labels = {tuple(np.round(domain.source[i]["label"].astype(float), 6).tolist()) for i in range(2)}
  assert labels == {(0.5, 0.25), (1.0, -0.2)}


@pytest.mark.parametrize("text,message", [
    ("path\nimg/a.png\n", "header naming the image column and at least one factor"),
    ("path,scale\nimg/a.png,0.5,0.1\n", r"targets.csv:2: expected 2 fields"),
    ("path,scale\nimg/a.png,big\n", r"targets.csv:2: 'big' is not a finite number \(factor 'scale'\)"),
    ("path,scale\nimg/a.png,nan\n", "'nan' is not a finite number"),
    ("path,scale,scale\nimg/a.png,1,2\n", "factor names must be unique"),
    ("path,scale\nimg/c.png,1\n", r"targets.csv:2: image 'img/c.png' not found"),
])
def test_image_csv_errors_are_one_line(tmp_path, text, message):
  name = _write_csv(tmp_path, text)
  with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
    open_domain(name, "train", data_dir=str(tmp_path / "tfds"))
  assert _one_line(info)
  with pytest.raises(FileNotFoundError, match="is not a file") as info:
    open_domain(f"image_csv:{tmp_path / 'nothing.csv'}", "train", data_dir=str(tmp_path))
  assert _one_line(info)
  assert not os.path.exists(tmp_path / "tfds" / "image_csv")


# ----------------------------------------------------------------------------
# Configs and task checks.
# ----------------------------------------------------------------------------


def test_regression_tasks_name_their_domains():
  config = default.get_config("sprites_p2c")
  assert (config.source, config.target) == ("sprites/photo", "sprites/color")
  assert config.label_kind == "regression" and config.model.output_activation == "sigmoid"
  assert default.get_config("mpi3d_rl2t").target == "mpi3d/toy"
  assert default.get_config("dsprites_c2s").model.name == "resnet18"


@pytest.mark.parametrize("name", ["dd", "rsd"])
def test_regression_method_configs(name):
  module = importlib.import_module(f"configs.{name}")
  assert f"configs/{name}.py:sprites_c2n" in module.__doc__
  config = module.get_config("sprites_c2n")
  method = create_method(config.method, num_classes=3)
  assert [n for n, _ in method.terms] == [name]
  assert method.label_kinds == ("regression",)
  with pytest.raises(ValueError, match="regression method and 'digits' is not") as info:
    module.get_config("digits")
  assert _one_line(info)


def test_dd_heads_follow_the_bottleneck():
  config = importlib.import_module("configs.dd").get_config("dsprites_c2n")
  assert (config.batch_size, config.total_steps, config.optimizer.weight_decay) == (128, 20000,
                                                                                    5e-4)
  config.model.bottleneck_dim = 64
  assert config.model.head_hidden == config.method.head_width == 64
  assert config.method.output_activation == "sigmoid"


def _regression_config(name: str, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """`configs/<name>.py:sprites_c2n` on the small domains, a narrow network, four steps."""
  config = importlib.import_module(f"configs.{name}").get_config("sprites_c2n")
  tiny = tiny_config(data_dir, total_steps=4, eval_every=4, checkpoint_every=2, log_every=1)
  for key in ("data_dir", "batch_size", "eval_batch_size", "total_steps", "eval_every",
              "checkpoint_every", "log_every"):
    config[key] = tiny[key]
  config.source, config.target = SOURCE, TARGET
  config.keep_checkpoints = 3
  config.data.num_threads = 0
  config.model.backbone_kwargs.widths = (8, 8, 16)
  config.model.bottleneck_dim = 32  # DD's heads follow it
  if "hidden_sizes" in config.method:
    config.method.hidden_sizes = (32, 32)
  if name == "rsd":
    # Batches of 16 in 32 features (dead ReLUs leave fewer) would span
    # subspaces that must share directions: cosines of 1, repeated, whose sines
    # and rotations rounding decides (TLlib's too), so one device and two would
    # part from the first step. TLlib's 256 features for batches of 36 are as
    # far from that as 128 for 16.
    config.model.bottleneck_dim = 128
  if name == "dd":
    # TLlib's N(0, 0.01) heads both start at 0.5, where the L1 disparity's
    # gradient sign(adv - main) is decided by rounding, which one device and two
    # round differently; heads that start apart make no such ties.
    config.method.head_init = "torch"
  set_fields(config, overrides)
  return config


def test_classification_config_stops_on_a_regression_dataset(sprites_data_dir, digits_data_dir,
                                                              tmp_path):
  config = tiny_config(sprites_data_dir, source=SOURCE, target=TARGET)
  with pytest.raises(ValueError, match="config.label_kind='classification'.*regression domain "
                     r"\(factors scale, position x, position y\)") as info:
    train.train_and_evaluate(config, str(tmp_path / "a"))
  assert _one_line(info) and not os.path.exists(tmp_path / "a" / "run.json")
  # And the reverse: a regression config on the digits.
  config = _regression_config("source_only", digits_data_dir, source="digits",
                              target="digits_m")
  with pytest.raises(ValueError, match="config.label_kind='regression'.*classification domain "
                     r"\(10 classes\)") as info:
    train.train_and_evaluate(config, str(tmp_path / "b"))
  assert _one_line(info) and not os.path.exists(tmp_path / "b" / "run.json")


def test_classification_method_or_head_stops_on_the_wrong_task(sprites_data_dir, digits_data_dir,
                                                               tmp_path):
  config = _regression_config("source_only", sprites_data_dir)
  config.method = importlib.import_module("configs.cdan").get_config("digits").method
  with pytest.raises(ValueError, match="trains classification tasks, and this task is "
                     "regression") as info:
    train.train_and_evaluate(config, str(tmp_path / "a"))
  assert _one_line(info) and not os.path.exists(tmp_path / "a" / "run.json")
  config = tiny_config(digits_data_dir, **{"model.output_activation": "sigmoid"})
  with pytest.raises(ValueError, match="output_activation='sigmoid' bounds regression") as info:
    train.train_and_evaluate(config, str(tmp_path / "b"))
  assert _one_line(info) and not os.path.exists(tmp_path / "b" / "run.json")


# ----------------------------------------------------------------------------
# Runs: short, resumed, one device.
# ----------------------------------------------------------------------------


class Runs:
  """The runs of each method, made once per module and in order of need."""

  def __init__(self, data_dir, root):
    self.data_dir, self.root = data_dir, root

  def _train(self, name, workdir, devices, **overrides):
    config = _regression_config(name, self.data_dir, **overrides)
    return train.train_and_evaluate(config, workdir, devices=jax.devices()[:devices])

  @functools.cache
  def full(self, name) -> str:
    """Four steps on two devices, checkpoints at 2 and 4."""
    workdir = os.path.join(self.root, name, "full")
    self._train(name, workdir, 2)
    return workdir

  @functools.cache
  def resumed(self, name) -> str:
    """`full`'s workdir cut back to its checkpoint of step 2, resumed to step 4."""
    workdir = os.path.join(self.root, name, "resumed")
    shutil.copytree(self.full(name), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    os.remove(os.path.join(workdir, "results.json"))
    self._train(name, workdir, 2)
    return workdir

  @functools.cache
  def one_device(self, name) -> str:
    workdir = os.path.join(self.root, name, "one_device")
    self._train(name, workdir, 1, checkpoint_every=4)
    return workdir


@pytest.fixture(scope="module")
def runs(sprites_data_dir, tmp_path_factory):
  return Runs(sprites_data_dir, str(tmp_path_factory.mktemp("regression_runs")))


@pytest.mark.parametrize("name", ["source_only", "dann", "dd", "rsd"])
def test_short_run_reports_regression_errors(name, runs):
  workdir = runs.full(name)
  lines = train_lines(workdir)
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  for line in lines:
    assert all(np.isfinite(v) for k, v in line.items() if k != "kind"), line
  assert "source_train_mae" in lines[-1] and "source_train_accuracy" not in lines[-1]
  if name != "source_only":
    assert lines[-1]["transfer_loss"] != 0
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  report = results["target_report"]
  assert results["primary_metric"] == {"name": "target_mae", "value": report["mae"],
                                       "higher_is_better": False, "selection": "final step"}
  assert results["task"]["kind"] == "regression"
  assert list(report["mae_per_factor"]) == list(sprites.FACTOR_NAMES)
  assert report["mae"] == pytest.approx(np.mean(list(report["mae_per_factor"].values())))
  assert report["num_examples"] == 200
  # Only the regression validator; the oracle picks the lowest target error.
  assert list(results["validators_final"]) == ["source_mae"]
  assert results["source_report"]["mae"] == pytest.approx(results["validators_final"]["source_mae"],
                                                          rel=1e-5)
  assert results["oracle_best"]["target_metric"] == report["mae"]


def test_predictions_are_the_sigmoid_heads_and_the_reported_error_is_theirs(runs, sprites_data_dir):
  workdir = runs.full("dd")
  config = _regression_config("dd", sprites_data_dir)
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  domains = train.open_data(config, workdir)
  setup = train.build(config, domains.num_classes, mesh, domains.input_shape,
                      labels=domains.labels)
  state, _ = state_at(workdir, None)
  variables = {"params": state["params"]["classifier"],
               **{k: v["classifier"] for k, v in state["model_state"].items()}}
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  pred = train.predict_all(setup, variables, domains.target_eval, config,
                           NamedSharding(mesh, P("data")))
  assert pred.logits.shape == (200, 3) and 0 < pred.logits.min() and pred.logits.max() < 1
  mae = np.abs(pred.logits.astype(np.float64) - pred.labels).mean()
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["target_report"]["mae"] == pytest.approx(mae, rel=1e-5)


@pytest.mark.parametrize("name", ["dd", "rsd"])
def test_resumed_run_is_bit_identical(name, runs):
  full, step = state_at(runs.full(name), None)
  resumed, resumed_step = state_at(runs.resumed(name), None)
  assert step == resumed_step == 4
  for part in ("params", "model_state", "method_state", "opt_state"):
    a, b = flat(full[part]), flat(resumed[part])
    assert a.keys() == b.keys()
    for k in a:
      assert a[k].tobytes() == b[k].tobytes(), (part, k)
  timeless = lambda lines: [{k: v for k, v in l.items() if k != "steps_per_second"}
                            for l in lines]
  assert timeless(train_lines(runs.full(name))) == timeless(train_lines(runs.resumed(name)))


@pytest.mark.parametrize("name", ["dd", "rsd"])
def test_one_and_two_devices_agree(name, runs):
  two, _ = state_at(runs.full(name), None)
  one, _ = state_at(runs.one_device(name), None)
  a, b = flat(two["params"]), flat(one["params"])
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=k)
  for x, y in zip(train_lines(runs.full(name)), train_lines(runs.one_device(name))):
    np.testing.assert_allclose(y["loss"], x["loss"], rtol=1e-5, atol=1e-6)


def test_dd_trains_its_adversarial_head_against_the_features(runs):
  before, _ = state_at(runs.full("dd"), 2)
  after, _ = state_at(runs.full("dd"), 4)
  head = flat(after["params"]["method"]["dd"]["adv_head"])
  assert head and any(not np.array_equal(v, flat(before["params"]["method"]["dd"]["adv_head"])[k])
                      for k, v in head.items())
  lines = train_lines(runs.full("dd"))
  # The term is -D; the reversal coefficient rises from 0 towards 0.1.
  assert all(l["transfer_loss"] == pytest.approx(-l["dd"]) for l in lines)
  assert lines[0]["grl_coeff"] == 0 and 0 < lines[-1]["grl_coeff"] < 0.1


# ----------------------------------------------------------------------------
# Tables.
# ----------------------------------------------------------------------------


def test_regression_tables_show_errors_to_three_decimals(tmp_path):
  for method, errors in (("source_only", (0.20, 0.22, 0.21)), ("dd", (0.11, 0.12, 0.10))):
    for seed, error in enumerate(errors):
      folder = tmp_path / method / "c2n" / f"seed{seed}"
      folder.mkdir(parents=True)
      (folder / "results.json").write_text(json.dumps({
          "primary_metric": {"name": "target_mae", "value": error, "higher_is_better": False},
          "source_report": {"primary": 0.05}, "wall_time_s": 10.0}))
  reference = tmp_path / "reference.csv"
  reference.write_text("method,task,mae\ndd,c2n,0.047\n")
  table = sweep.collect(str(tmp_path), {"methods": {"source_only": "", "dd": ""},
                                        "tasks": {"c2n": {}}, "seeds": [0, 1, 2]},
                        sweep.read_reference(str(reference)))
  text = sweep.render_markdown(table, "sprites")
  assert "| dd | 0.110 ± 0.010 | 0.047 | 0.050 | 3 |" in text
  assert "source MAE" in text and "Target mean absolute error" in text
  assert "-0.100 [" in text and "] better |" in text  # paired: lower error than ERM
