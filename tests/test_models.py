"""Backbones and checkpoint loading, against torchvision / timm where installed.

The parity tests build a PyTorch reference with random weights, save its state
dict the way checkpoints are published, load it through
`tljax.models.checkpoints`, and compare pooled features and logits of the
eval-mode networks on the same input. BatchNorm affine parameters are
randomised and running statistics calibrated on random batches (then
perturbed), so that BN is far from the identity and a wrong mapping shows.

About the fp32 tolerance: a deep network with random weights amplifies
rounding. For ResNet-50, torch's own fp32 output is ~2e-4 away from torch in
fp64, so two correct fp32 implementations cannot agree to 1e-4 absolute. The
fp32 checks therefore allow 1e-4 relative to the output scale, and the ResNets
are additionally compared in fp64 (JAX x64 against torch `.double()`), which
is exact up to the final fp32 cast of the classifier's outputs.
"""

import copy
import json
import collections
import os
import pathlib
import subprocess
import sys

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import safetensors.numpy

from benchmarks import cases
from benchmarks import flax_steps
from benchmarks import office31_like
from benchmarks import profiling
from conftest import model_config
from tljax import models
from tljax.models import checkpoints
from tljax.models import convert
from tljax.models import torch_pickle
from tljax.models import vgg as vgg_lib
from tljax.models import vit as vit_lib

BATCH = 2
TIMM_NAMES = {"vit_tiny_patch16": "vit_tiny_patch16_224",
              "vit_base_patch16": "vit_base_patch16_224"}


def _torch():
  return pytest.importorskip(
      "torch", reason="parity tests need PyTorch (pip install tljax[test])")


def _flat(variables):
  return flax.traverse_util.flatten_dict(dict(variables), sep="/")


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _torch_reference(name: str, size: int, seed: int = 0):
  """A torchvision / timm model in eval mode with non-trivial BatchNorm."""
  torch = _torch()
  torch.manual_seed(seed)
  if name.startswith("vit"):
    timm = pytest.importorskip("timm", reason="ViT parity tests need timm")
    model = timm.create_model(TIMM_NAMES[name], pretrained=False)
  else:
    torchvision = pytest.importorskip("torchvision", reason="needs torchvision")
    model = getattr(torchvision.models, name)()
  batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  if batch_norms:
    for bn in batch_norms:
      torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
      torch.nn.init.normal_(bn.bias, 0.0, 0.2)
      bn.momentum = None  # running stats = cumulative average over the batches
    model.train()
    with torch.no_grad():
      for _ in range(2):
        model(torch.randn(4, 3, size, size))
      for bn in batch_norms:
        bn.running_mean.add_(0.1 * torch.randn_like(bn.running_mean))
        bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
  return model.eval()


def _torch_outputs(model, images_nchw):
  """(pooled features, logits) of a torch classifier: the head's input is the
  feature vector."""
  torch = _torch()
  head = getattr(model, "fc", None) or getattr(model, "head", None) or model.classifier[6]
  captured = {}
  hook = head.register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0]))
  with torch.no_grad():
    logits = model(images_nchw)
  hook.remove()
  return captured["x"].double().numpy(), logits.double().numpy()


def _state_dict_numpy(model):
  return {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}


def _classifier(name: str, size: int, num_classes: int = 1000, dtype=jnp.float32, **kwargs):
  if name.startswith("vit"):
    kwargs.setdefault("image_size", size)
  backbone = models.get_backbone(name, dtype=dtype, **kwargs)
  return models.Classifier(backbone, num_classes=num_classes, dtype=dtype)


def _shapes(model, size: int):
  """The variable tree as `jax.ShapeDtypeStruct`s: enough as a loading target
  when everything comes from the checkpoint, and far cheaper than `init`, whose
  random number generation takes tens of seconds to compile on a small CPU."""
  images = jax.ShapeDtypeStruct((BATCH, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def _random_variables(model, size: int, seed: int = 0):
  """Variables drawn with numpy (fan-in scaled kernels, non-trivial norms)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, shape)
    elif name == "kernel":
      # Attention `out` kernels are (heads, head_dim, out); `query` etc. (in, heads, hd).
      fan_in = shape[0] if len(shape) == 3 and path[-2].key != "out" else np.prod(shape[:-1])
      value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
    else:  # bias, mean, cls, pos_embedding
      value = rng.normal(0.0, 0.1, shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, _shapes(model, size))


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory):
  """torchvision ResNet-18 (calibrated BN) saved as .safetensors and .pth."""
  torch = _torch()
  model = _torch_reference("resnet18", 64)
  directory = tmp_path_factory.mktemp("resnet18")
  safetensors.numpy.save_file(_state_dict_numpy(model), directory / "model.safetensors")
  torch.save(model.state_dict(), directory / "model.pth")
  return model, directory / "model.safetensors", directory / "model.pth"


# ----------------------------------------------------------------------------
# Parity with torchvision / timm.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet50", 64), ("vgg16", 64),
                                       ("vit_tiny_patch16", 224), ("vit_base_patch16", 224)])
def test_parity_with_torch(name, size, tmp_path):
  torch = _torch()
  reference = _torch_reference(name, size)
  images = np.random.default_rng(1).normal(size=(BATCH, 3, size, size)).astype(np.float32)
  want_features, want_logits = _torch_outputs(reference, torch.from_numpy(images))

  state = _state_dict_numpy(reference)
  safetensors.numpy.save_file(state, tmp_path / "model.safetensors")
  torch.save(reference.state_dict(), tmp_path / "model.pth")
  model = _classifier(name, size)
  target = _shapes(model, size)
  variables = checkpoints.load(target, tmp_path / "model.safetensors", backbone=name,
                               load_head=True)
  from_pth = checkpoints.load(target, tmp_path / "model.pth", backbone=name, load_head=True)
  for key, value in _flat(variables).items():
    np.testing.assert_array_equal(value, _flat(from_pth)[key], err_msg=key)

  images_nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))
  features, logits = jax.jit(model.apply)(variables, images_nhwc)
  assert features.shape == want_features.shape and logits.shape == want_logits.shape
  feature_diff = _max_diff(features, want_features)
  logit_diff = _max_diff(logits, want_logits)
  print(f"{name}@{size}px fp32: features max|diff| {feature_diff:.2e} "
        f"(scale {np.abs(want_features).max():.2f}), logits {logit_diff:.2e}")
  assert feature_diff <= 1e-4 * max(1.0, np.abs(want_features).max())
  assert logit_diff <= 1e-4 * max(1.0, np.abs(want_logits).max())

  if name.startswith("resnet"):
    with jax.enable_x64(True):
      model64 = _classifier(name, size, dtype=jnp.float64)
      variables64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables)
      features64, logits64 = jax.jit(model64.apply)(variables64, images_nhwc.astype(jnp.float64))
    want_features64, want_logits64 = _torch_outputs(reference.double(),
                                                    torch.from_numpy(images).double())
    print(f"{name} fp64: features {_max_diff(features64, want_features64):.2e}, "
          f"logits {_max_diff(logits64, want_logits64):.2e}")
    # Only the classifier's final fp32 cast separates them.
    assert _max_diff(features64, want_features64) <= 2e-6
    assert _max_diff(logits64, want_logits64) <= 2e-6


@pytest.mark.parametrize("strides,size", [(1, 8), (2, 8), (2, 7)])
def test_pointwise_conv_as_dot_equals_convolution(strides, size):
  from tljax.models import resnet  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.normal(size=(2, size, size, 16)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(1, 1, 16, 8)), jnp.float32)
  arguments = (inputs, kernel, (strides, strides), ((0, 0), (0, 0)))
  numbers = jax.lax.conv_dimension_numbers(inputs.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  got = resnet.pointwise_conv_as_dot(*arguments, dimension_numbers=numbers)
  want = jax.lax.conv_general_dilated(*arguments, dimension_numbers=numbers)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vgg_adaptive_pool_matches_torch():
  torch = _torch()
  rng = np.random.default_rng(0)
  for size in (1, 2, 5, 7, 10, 14, 17):
    x = rng.normal(size=(2, size, size + 3, 4)).astype(np.float32)
    got = vgg_lib.adaptive_avg_pool(jnp.asarray(x), 7)
    want = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), 7).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"size {size}")


# ----------------------------------------------------------------------------
# Inception-v3 against torchvision.
# ----------------------------------------------------------------------------

# 107 px gives 5x5 maps in Mixed_6* and 2x2 in Mixed_7*, where every pixel of
# the padded average pools is a border pixel: small, and still telling.
INCEPTION_SIZE = 107


def _calibrate_batch_norm_in_eval(model, images):
  """Sets every BatchNorm's running statistics from what it sees in one
  eval-mode pass over `images`, perturbed (mean by 0.1 std, variance by a
  factor in [0.8, 1.25]).

  Unlike calibrating in train mode and perturbing afterwards, each layer is
  calibrated on its input as the eval network computes it, i.e. after the
  perturbations upstream. Otherwise the mismatches compound over Inception's
  ~50 layers and pooled features reach the hundreds, where fp32 rounding alone
  exceeds any useful tolerance.
  """
  torch = _torch()

  def set_statistics(bn, inputs):
    x = inputs[0]
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
    bn.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn_like(mean))
    bn.running_var.copy_(var * torch.empty_like(var).uniform_(0.8, 1.25))

  hooks = [module.register_forward_pre_hook(set_statistics) for module in model.modules()
           if isinstance(module, torch.nn.BatchNorm2d)]
  model.eval()
  with torch.no_grad():
    model(images)
  for hook in hooks:
    hook.remove()


@pytest.fixture(scope="module")
def inception_files(tmp_path_factory):
  """torchvision Inception-v3 with its auxiliary head and `transform_input`,
  random BatchNorm, saved as .safetensors and .pth."""
  torch = _torch()
  torchvision = pytest.importorskip("torchvision", reason="needs torchvision")
  torch.manual_seed(0)
  # torch's default initialisation: torchvision's own (init_weights=True)
  # draws the same kind of random weights ten times slower.
  model = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True,
                                          transform_input=True)
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      torch.nn.init.uniform_(module.weight, 0.5, 1.5)
      torch.nn.init.normal_(module.bias, 0.0, 0.2)
      # The eval pass below leaves the auxiliary head (training only) as is.
      torch.nn.init.normal_(module.running_mean, 0.0, 0.1)
      torch.nn.init.uniform_(module.running_var, 0.8, 1.25)
  _calibrate_batch_norm_in_eval(model, torch.randn(4, 3, INCEPTION_SIZE, INCEPTION_SIZE))
  directory = tmp_path_factory.mktemp("inception_v3")
  safetensors.numpy.save_file(_state_dict_numpy(model), directory / "model.safetensors")
  torch.save(model.state_dict(), directory / "model.pth")
  return model, directory / "model.safetensors", directory / "model.pth"


def _inception_config(**backbone_kwargs):
  return model_config(name="inception_v3", bottleneck_dim=0, backbone_kwargs=backbone_kwargs)


def test_inception_v3_parity_with_torchvision(inception_files):
  """Eval mode at 107 px, built by `create_classifier` with the auxiliary head
  (idle in eval) and `transform_input=True`, loaded from both formats."""
  torch = _torch()
  reference, safetensors_path, pth_path = inception_files
  size = INCEPTION_SIZE
  images = np.random.default_rng(1).normal(size=(BATCH, 3, size, size)).astype(np.float32)
  want_features, want_logits = _torch_outputs(reference, torch.from_numpy(images))

  model = models.create_classifier(_inception_config(aux_logits=True, transform_input=True),
                                   num_classes=1000)
  target = _shapes(model, size)
  variables = checkpoints.load(target, safetensors_path, backbone="inception_v3", load_head=True)
  from_pth = checkpoints.load(target, pth_path, backbone="inception_v3", load_head=True)
  for key, value in _flat(variables).items():
    np.testing.assert_array_equal(value, _flat(from_pth)[key], err_msg=key)

  features, logits = jax.jit(model.apply)(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
  assert features.shape == (BATCH, 2048) and logits.shape == (BATCH, 1000)
  feature_scale, logit_scale = np.abs(want_features).max(), np.abs(want_logits).max()
  feature_diff, logit_diff = _max_diff(features, want_features), _max_diff(logits, want_logits)
  print(f"inception_v3@{size}px fp32: features max|diff| {feature_diff:.2e} "
        f"(scale {feature_scale:.2f}), logits {logit_diff:.2e} (scale {logit_scale:.2f})")
  # Relative to the scale, as above, with twice the room: this random network
  # amplifies rounding block by block, and torch's own fp32 features are already
  # 4e-5 (relative) away from its fp64 ones, so two fp32 implementations can
  # differ by ~1e-4. In fp64 the two agree to ~4e-7 (not run here: ~10 s).
  assert feature_diff <= 2e-4 * max(1.0, feature_scale)
  assert logit_diff <= 2e-4 * max(1.0, logit_scale)


@pytest.mark.parametrize("map_size", [17, 20])
def test_inception_v3_aux_head_in_training_matches_torchvision(inception_files, map_size):
  """`AuxLogits` in train mode (batch statistics in both) on `Mixed_6e`-shaped
  input: 17x17 is its map at 299 px (1x1 after the 5x5 convolution), 20x20
  exercises the global pooling that follows at larger sizes."""
  from tljax.models import inception  # pylint: disable=g-import-not-at-top
  torch = _torch()
  reference, safetensors_path, _ = inception_files
  aux_reference = copy.deepcopy(reference.AuxLogits).train()
  inputs = np.abs(np.random.default_rng(3).normal(size=(BATCH, 768, map_size, map_size)))
  inputs = inputs.astype(np.float32)
  with torch.no_grad():
    want = aux_reference(torch.from_numpy(inputs)).double().numpy()

  prefix = "backbone/AuxLogits/"
  arrays = checkpoints.read(safetensors_path, backbone="inception_v3").arrays
  variables = flax.traverse_util.unflatten_dict(
      {key.replace(prefix, ""): jnp.asarray(value) for key, value in arrays.items()
       if prefix in key}, sep="/")
  got, updates = jax.jit(
      lambda v, x: inception.InceptionAux(num_classes=1000).apply(
          v, x, train=True, mutable=["batch_stats"]))(variables, inputs.transpose(0, 2, 3, 1))
  print(f"AuxLogits on {map_size}x{map_size}, train: max|diff| {_max_diff(got, want):.2e} "
        f"(scale {np.abs(want).max():.3f})")
  assert _max_diff(got, want) <= 1e-4 * max(1.0, np.abs(want).max())
  # torch's momentum 0.1 is flax's 0.9; both average the unbiased batch variance.
  for conv in ("conv0", "conv1"):
    for ours, theirs in (("mean", "running_mean"), ("var", "running_var")):
      np.testing.assert_allclose(updates["batch_stats"][conv]["bn"][ours],
                                 getattr(getattr(aux_reference, conv).bn, theirs).numpy(),
                                 rtol=1e-5, atol=1e-5, err_msg=f"{conv} {ours}")


def test_inception_v3_classifier_and_image_sizes():
  """`create_classifier` gives the auxiliary head the task's classes and the
  train step finds its logits in `intermediates`; models with the head
  initialise on small images, but train only from 299 px."""
  model = models.create_classifier(_inception_config(aux_logits=True), num_classes=5)
  small = jax.ShapeDtypeStruct((BATCH, 75, 75, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), small)
  assert variables["params"]["backbone"]["AuxLogits"]["fc"]["kernel"].shape == (768, 5)
  assert variables["params"]["head"]["kernel"].shape == (2048, 5)

  def train_forward(images):
    return jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"]),
        variables, images)

  (features, logits), updates = train_forward(
      jax.ShapeDtypeStruct((BATCH, 299, 299, 3), jnp.float32))
  assert features.shape == (BATCH, 2048) and logits.shape == (BATCH, 5)
  aux_logits = updates["intermediates"]["backbone"]["aux_logits"][0]
  assert aux_logits.shape == (BATCH, 5) and aux_logits.dtype == jnp.float32
  with pytest.raises(ValueError, match="at least 299 px"):
    train_forward(small)
  with pytest.raises(ValueError, match="at least 75x75"):
    jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((BATCH, 74, 80, 3), jnp.float32))


def test_inception_v3_loading_errors(inception_files, resnet18_files):
  """Without the auxiliary head, its weights are reported until `dont_load`
  skips them; a ResNet checkpoint fails with one error saying so."""
  _, safetensors_path, _ = inception_files
  target = _shapes(_classifier("inception_v3", INCEPTION_SIZE), INCEPTION_SIZE)
  assert "AuxLogits" not in target["params"]["backbone"]
  with pytest.raises(ValueError) as error:
    checkpoints.load(target, safetensors_path, backbone="inception_v3")
  message = str(error.value)
  assert "12 unexpected in the checkpoint" in message  # conv0/conv1 (conv + 4 BN), fc (2)
  assert "params/backbone/AuxLogits/conv1/conv/kernel" in message
  assert "aux_logits=True" in message and "missing" not in message

  loaded = checkpoints.load(target, safetensors_path, backbone="inception_v3",
                            dont_load=["backbone/AuxLogits/.*"])
  state = safetensors.numpy.load_file(safetensors_path)
  np.testing.assert_array_equal(
      loaded["params"]["backbone"]["Mixed_6e"]["branch7x7dbl_3"]["conv"]["kernel"],
      state["Mixed_6e.branch7x7dbl_3.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      loaded["batch_stats"]["backbone"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
      state["Mixed_7c.branch_pool.bn.running_var"])

  _, resnet_path, _ = resnet18_files
  num_backbone = sum(1 for key in _flat(target) if _flat_inner(key).startswith("backbone/"))
  with pytest.raises(ValueError) as error:
    checkpoints.load(target, resnet_path, backbone="inception_v3")
  message = str(error.value)
  assert "no checkpoint entry matches a model variable" in message
  assert f"{num_backbone} missing from the checkpoint" in message
  assert "batch_stats/backbone/Conv2d_1a_3x3/bn/mean" in message
  assert "layer1.0.conv1.weight (untranslated)" in message


def _flat_inner(key: str) -> str:
  return key.split("/", 1)[1]


def test_inception_v3_convert_keeps_the_aux_head(inception_files):
  """`tljax.models.convert` builds the auxiliary head when the checkpoint has it."""
  _, safetensors_path, _ = inception_files
  arrays = convert.convert("inception_v3", str(safetensors_path))
  state = safetensors.numpy.load_file(safetensors_path)
  assert len(arrays) == sum(1 for key in state if not key.endswith("num_batches_tracked"))
  np.testing.assert_array_equal(arrays["params/backbone/AuxLogits/fc/kernel"],
                                state["AuxLogits.fc.weight"].T)
  np.testing.assert_array_equal(arrays["params/head/bias"], state["fc.bias"])


# ----------------------------------------------------------------------------
# big_vision / AugReg .npz ViTs and position-embedding resampling.
# ----------------------------------------------------------------------------


def _timm_to_augreg(state, num_heads: int) -> dict[str, np.ndarray]:
  """A timm ViT state dict in the AugReg (vision_transformer repo) naming."""
  out = {
      "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
      "embedding/bias": state["patch_embed.proj.bias"],
      "cls": state["cls_token"],
      "Transformer/posembed_input/pos_embedding": state["pos_embed"],
      "Transformer/encoder_norm/scale": state["norm.weight"],
      "Transformer/encoder_norm/bias": state["norm.bias"],
      "head/kernel": state["head.weight"].T,
      "head/bias": state["head.bias"],
  }
  depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
  for index in range(depth):
    block, prefix = f"blocks.{index}.", f"Transformer/encoderblock_{index}/"
    width = state[block + "norm1.weight"].shape[0]
    head_dim = width // num_heads
    for norm, name in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
      out[f"{prefix}{name}/scale"] = state[f"{block}{norm}.weight"]
      out[f"{prefix}{name}/bias"] = state[f"{block}{norm}.bias"]
    qkv_weight = np.split(state[block + "attn.qkv.weight"], 3)
    qkv_bias = np.split(state[block + "attn.qkv.bias"], 3)
    for part, weight, bias in zip(("query", "key", "value"), qkv_weight, qkv_bias):
      out[f"{prefix}MultiHeadDotProductAttention_1/{part}/kernel"] = (
          weight.T.reshape(width, num_heads, head_dim))
      out[f"{prefix}MultiHeadDotProductAttention_1/{part}/bias"] = (
          bias.reshape(num_heads, head_dim))
    out[f"{prefix}MultiHeadDotProductAttention_1/out/kernel"] = (
        state[block + "attn.proj.weight"].T.reshape(num_heads, head_dim, width))
    out[f"{prefix}MultiHeadDotProductAttention_1/out/bias"] = state[block + "attn.proj.bias"]
    for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      out[f"{prefix}MlpBlock_3/{dense}/kernel"] = state[f"{block}mlp.{fc}.weight"].T
      out[f"{prefix}MlpBlock_3/{dense}/bias"] = state[f"{block}mlp.{fc}.bias"]
  return out


@pytest.fixture(scope="module")
def vit_tiny_augreg(tmp_path_factory):
  """timm vit_tiny (random) and the same weights as an AugReg-named .npz."""
  torch = _torch()
  timm = pytest.importorskip("timm", reason="needs timm")
  reference = _torch_reference("vit_tiny_patch16", 224, seed=3)
  path = tmp_path_factory.mktemp("augreg") / "Ti_16.npz"
  np.savez(path, **_timm_to_augreg(_state_dict_numpy(reference), num_heads=3))
  # The naming in this test is right if timm's own .npz reader agrees.
  reloaded = timm.create_model(TIMM_NAMES["vit_tiny_patch16"], pretrained=False)
  reloaded.load_pretrained(str(path))
  for key, value in reloaded.state_dict().items():
    torch.testing.assert_close(value, reference.state_dict()[key], rtol=0, atol=0, msg=key)
  return reference, path


def test_augreg_npz_matches_timm(vit_tiny_augreg):
  torch = _torch()
  reference, path = vit_tiny_augreg
  images = np.random.default_rng(2).normal(size=(BATCH, 3, 224, 224)).astype(np.float32)
  want_features, want_logits = _torch_outputs(reference, torch.from_numpy(images))
  model = _classifier("vit_tiny_patch16", 224)
  variables = checkpoints.load(_shapes(model, 224), path, backbone="vit_tiny_patch16",
                               load_head=True)
  features, logits = jax.jit(model.apply)(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
  print(f"AugReg npz: features {_max_diff(features, want_features):.2e}, "
        f"logits {_max_diff(logits, want_logits):.2e}")
  assert _max_diff(features, want_features) <= 1e-4
  assert _max_diff(logits, want_logits) <= 1e-4


def test_big_vision_scanned_npz_loads(tmp_path):
  """Current big_vision names, blocks stacked on a leading axis (scan)."""
  model = _classifier("vit_tiny_patch16", 32, num_classes=5)
  variables = _random_variables(model, 32)
  flat = {key[len("params/backbone/"):]: np.asarray(value)
          for key, value in _flat(variables).items() if key.startswith("params/backbone/")}
  saved = {key: value for key, value in flat.items() if "encoderblock_" not in key}
  for key in [key for key in flat if key.startswith("Transformer/encoderblock_0/")]:
    rest = key[len("Transformer/encoderblock_0/"):]
    saved[f"Transformer/encoderblock/{rest}"] = np.stack(
        [flat[f"Transformer/encoderblock_{index}/{rest}"] for index in range(12)])
  np.savez(tmp_path / "bv.npz", **{f"params/{key}": value for key, value in saved.items()})
  loaded = checkpoints.load(_shapes(model, 32), tmp_path / "bv.npz", backbone="vit_tiny_patch16")
  for key, value in _flat(variables).items():
    if key.startswith("params/backbone/"):
      np.testing.assert_array_equal(_flat(loaded)[key], value, err_msg=key)


def test_posemb_resampling(vit_tiny_augreg):
  torch = _torch()
  reference, path = vit_tiny_augreg
  model = _classifier("vit_tiny_patch16", 160)
  variables = checkpoints.load(_shapes(model, 160), path, backbone="vit_tiny_patch16",
                               load_head=True)
  posemb = np.asarray(variables["params"]["backbone"]["pos_embedding"])
  assert posemb.shape == (1, 10 * 10, 192)

  pos_embed = reference.pos_embed.detach()
  grid = pos_embed[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(grid, size=(10, 10), mode="bilinear",
                                         align_corners=False, antialias=True)
  want = want.permute(0, 2, 3, 1).reshape(1, 100, 192).numpy()
  np.testing.assert_allclose(posemb, want, atol=1e-5)
  # The class token keeps its own position embedding, folded into `cls`.
  np.testing.assert_allclose(variables["params"]["backbone"]["cls"],
                             (reference.cls_token + pos_embed[:, :1]).detach().numpy(),
                             atol=1e-6)

  images = jnp.asarray(np.random.default_rng(3).normal(size=(BATCH, 160, 160, 3)), jnp.float32)
  features, logits = jax.jit(model.apply)(variables, images)
  assert features.shape == (BATCH, 192) and logits.shape == (BATCH, 1000)
  assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits))


def test_resample_posemb_upsamples_like_jax_resize():
  posemb = np.random.default_rng(0).normal(size=(1, 49, 8)).astype(np.float32)
  got = vit_lib.resample_posemb(posemb, (12, 12))
  want = jax.image.resize(posemb.reshape(7, 7, 8), (12, 12, 8), "bilinear")
  np.testing.assert_allclose(got, np.asarray(want).reshape(1, 144, 8), atol=1e-6)


# ----------------------------------------------------------------------------
# Loading errors and dont_load.
# ----------------------------------------------------------------------------


def test_shape_mismatch_names_parameter_and_shapes(resnet18_files, tmp_path):
  _, safetensors_path, _ = resnet18_files
  state = safetensors.numpy.load_file(safetensors_path)
  state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"][:, :32]
  safetensors.numpy.save_file(state, tmp_path / "bad.safetensors")
  target = _shapes(_classifier("resnet18", 32), 32)
  with pytest.raises(ValueError) as error:
    checkpoints.load(target, tmp_path / "bad.safetensors", backbone="resnet18")
  message = str(error.value)
  assert "params/backbone/layer2_0/conv1/kernel" in message
  assert "(3, 3, 32, 128)" in message and "(3, 3, 64, 128)" in message


def test_head_is_skipped_by_default_and_checked_when_loaded(resnet18_files):
  _, safetensors_path, _ = resnet18_files
  init = _random_variables(_classifier("resnet18", 32, num_classes=10), 32)
  loaded = checkpoints.load(init, safetensors_path, backbone="resnet18")
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"],
                                init["params"]["head"]["kernel"])
  with pytest.raises(ValueError, match=r"params/head/kernel: checkpoint \(512, 1000\) "
                                       r"vs model \(512, 10\)"):
    checkpoints.load(init, safetensors_path, backbone="resnet18", load_head=True)


def test_missing_and_unexpected_keys_are_listed(resnet18_files, tmp_path):
  _, safetensors_path, _ = resnet18_files
  state = safetensors.numpy.load_file(safetensors_path)
  for name in ("weight", "bias", "running_mean", "running_var"):
    del state[f"layer4.1.bn2.{name}"]
  state["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  safetensors.numpy.save_file(state, tmp_path / "partial.safetensors")
  target = _shapes(_classifier("resnet18", 32), 32)
  with pytest.raises(ValueError) as error:
    checkpoints.load(target, tmp_path / "partial.safetensors", backbone="resnet18")
  message = str(error.value)
  for key in ("params/backbone/layer4_1/bn2/scale", "params/backbone/layer4_1/bn2/bias",
              "batch_stats/backbone/layer4_1/bn2/mean",
              "batch_stats/backbone/layer4_1/bn2/var", "layer5.0.conv1.weight"):
    assert key in message
  assert "4 missing" in message and "1 unexpected" in message


def test_dont_load_keeps_initialisation(resnet18_files):
  _, safetensors_path, _ = resnet18_files
  state = safetensors.numpy.load_file(safetensors_path)
  init = _random_variables(_classifier("resnet18", 32), 32)
  loaded = checkpoints.load(init, safetensors_path, backbone="resnet18",
                            dont_load=["backbone/layer4_1/.*"])
  flat_init, flat_loaded = _flat(init), _flat(loaded)
  for key in flat_init:
    if "layer4_1" in key or key.startswith("params/head/"):
      np.testing.assert_array_equal(flat_loaded[key], flat_init[key], err_msg=key)
  np.testing.assert_array_equal(flat_loaded["batch_stats/backbone/layer4_0/bn1/mean"],
                                state["layer4.0.bn1.running_mean"])
  np.testing.assert_array_equal(flat_loaded["params/backbone/conv1/kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))


class _WritesAFile:
  """Pickles as a call that would create `path` when unpickled."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (exec, (f"open({self.path!r}, 'w').write('owned')",))


def test_pickle_with_code_is_refused(tmp_path):
  torch = _torch()
  marker = tmp_path / "written_by_pickle"
  torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "payload": _WritesAFile(marker)},
             tmp_path / "evil.pth")
  assert not marker.exists()
  target = _shapes(_classifier("resnet18", 32), 32)
  with pytest.raises(ValueError, match="refusing to load"):
    checkpoints.load(target, tmp_path / "evil.pth", backbone="resnet18")
  assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_files_read_without_torch_as_torch_loads_them(legacy, tmp_path):
  """`torch_pickle.read_state` against `torch.load(weights_only=True)`: both
  of torch.save's formats (the legacy one: torchvision's older weights), the
  dtypes of state dicts, views into a shared storage, transposed strides,
  scalars, parameters, a training checkpoint's nesting."""
  torch = _torch()
  generator = torch.Generator().manual_seed(0)
  shared = torch.randn(6, 5, generator=generator)
  state = collections.OrderedDict(
      weight=torch.randn(4, 3, 3, 3, generator=generator),
      bf16=torch.randn(4, generator=generator).to(torch.bfloat16),
      half=torch.randn(3, generator=generator).half(),
      num_batches_tracked=torch.tensor(7), index=torch.arange(5),
      flags=torch.tensor([True, False]), transposed=shared.t(), rows=shared[2:4],
      parameter=torch.nn.Parameter(torch.randn(2, 2, generator=generator)))
  path = tmp_path / "model.pth"
  torch.save({"state_dict": state, "epoch": 3}, path, _use_new_zipfile_serialization=not legacy)
  ours = torch_pickle.read_state(str(path))
  theirs = torch.load(path, weights_only=True)
  assert ours["epoch"] == theirs["epoch"] == 3
  assert list(ours["state_dict"]) == list(state)
  for key, tensor in theirs["state_dict"].items():
    expected = tensor.detach()
    expected = (expected.float() if expected.dtype == torch.bfloat16 else expected).numpy()
    assert ours["state_dict"][key].dtype == expected.dtype, key
    np.testing.assert_array_equal(ours["state_dict"][key], expected, err_msg=key)


def _write_checkpoint(path, state):
  """A good file of `path`'s format holding `state` (name -> float32 array)."""
  if path.suffix == ".safetensors":
    safetensors.numpy.save_file(state, path)
  elif path.suffix == ".pth":
    torch = _torch()
    torch.save({key: torch.from_numpy(value) for key, value in state.items()}, path)
  else:
    np.savez(path, **state)


def _truncate(data):
  return data[:len(data) // 2]


def _overwrite_middle(data):
  # Inside the second of four equal tensors in every format. 0xff bytes are
  # NaN as float32, and a wrong CRC where the format checks one.
  middle = len(data) * 3 // 8
  return data[:middle] + b"\xff" * 64 + data[middle + 64:]


def _garbage(data):
  del data
  return b"<html><body>404 Not Found</body></html>\n" * 20  # a web page saved as the file


def _empty(data):
  del data
  return b""


@pytest.mark.parametrize("damage,suffix,message", [
    (_truncate, ".safetensors", "is not a valid safetensors file (SafetensorError"),
    (_overwrite_middle, ".safetensors", "is corrupt: 1 of its 4 tensors hold NaN or infinite"),
    (_garbage, ".safetensors", "is not a valid safetensors file (SafetensorError"),
    (_empty, ".safetensors", "is not a valid safetensors file (SafetensorError"),
    (_truncate, ".pth", "is a truncated or corrupt torch file ("),
    (_overwrite_middle, ".pth", "is a truncated or corrupt torch file (BadZipFile: Bad CRC-32"),
    (_garbage, ".pth", "is not a PyTorch file (neither a zip archive nor a pickle); it starts "
                       "with b'<html><body>404 '"),
    (_empty, ".pth", "is empty"),
    (_truncate, ".npz", "is a truncated or corrupt .npz file (BadZipFile"),
    (_overwrite_middle, ".npz", "is a truncated or corrupt .npz file (BadZipFile: Bad CRC-32"),
    (_garbage, ".npz", "is not a .npz file (a zip archive of .npy arrays)"),
    (_empty, ".npz", "is empty")], ids=lambda x: getattr(x, "__name__", None) or str(x)[:4])
def test_damaged_checkpoint_is_one_line_naming_file_and_problem(damage, suffix, message,
                                                                 tmp_path):
  rng = np.random.default_rng(0)
  # torchvision names, or for .npz those of `tljax.models.convert`.
  name = "params/backbone/layer{}_0/conv1/kernel" if suffix == ".npz" else "layer{}.0.conv1.weight"
  state = {name.format(i): rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
           for i in range(1, 5)}
  path = tmp_path / f"resnet18{suffix}"
  _write_checkpoint(path, state)
  good = checkpoints.read(path, backbone="resnet18")
  assert len(good.arrays) == 4
  path.write_bytes(damage(path.read_bytes()))
  with pytest.raises(ValueError) as error:
    checkpoints.read(path, backbone="resnet18")
  assert str(error.value).startswith(f"checkpoint {path} {message}")
  assert str(error.value).endswith("; download or convert it again")
  assert "\n" not in str(error.value) and len(str(error.value)) < 500


def test_missing_checkpoint_is_file_not_found(tmp_path):
  target = _shapes(_classifier("resnet18", 32), 32)
  with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path}/nope.safetensors does "
                                              "not exist: set config.model.init"):
    checkpoints.load(target, tmp_path / "nope.safetensors", backbone="resnet18")
  (tmp_path / "weights.pth").mkdir()
  with pytest.raises(ValueError, match="weights.pth is not a file"):
    checkpoints.read(tmp_path / "weights.pth", backbone="resnet18")


# ----------------------------------------------------------------------------
# Mixed precision and frozen BatchNorm.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("vit_tiny_patch16", 32)])
def test_bfloat16_forward_is_close_to_float32(name, size):
  model32 = _classifier(name, size)
  model16 = _classifier(name, size, dtype=jnp.bfloat16)
  variables = _random_variables(model32, size)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, size, size, 3)), jnp.float32)
  features32, logits32 = jax.jit(model32.apply)(variables, images)
  features16, logits16 = jax.jit(model16.apply)(variables, images)
  assert features16.dtype == jnp.float32  # the classifier returns fp32
  for got, want in ((features16, features32), (logits16, logits32)):
    relative = _max_diff(got, want) / max(float(np.abs(want).max()), 1e-6)
    print(f"{name} bf16 vs fp32: max relative diff {relative:.3f}")
    assert relative < 0.05


def test_frozen_norm_keeps_running_stats_in_training():
  size = 32
  frozen = _classifier("resnet18", size, frozen_norm="backbone/.*")
  # Non-trivial statistics (see _random_variables), so that "unchanged" means something.
  variables = _random_variables(frozen, size)
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.normal(size=(BATCH, size, size, 3)), jnp.float32)

  (train_features, _), updates = jax.jit(
      lambda v, x: frozen.apply(v, x, train=True, mutable=["batch_stats"]))(variables, images)
  eval_features, _ = jax.jit(frozen.apply)(variables, images)
  for key, value in _flat(variables["batch_stats"]).items():
    np.testing.assert_array_equal(_flat(updates["batch_stats"])[key], value, err_msg=key)
  np.testing.assert_allclose(train_features, eval_features, atol=1e-6)

  trainable = _classifier("resnet18", size)  # control: statistics do move
  _, moved = jax.jit(
      lambda v, x: trainable.apply(v, x, train=True, mutable=["batch_stats"]))(variables, images)
  assert _max_diff(moved["batch_stats"]["backbone"]["bn1"]["mean"],
                   variables["batch_stats"]["backbone"]["bn1"]["mean"]) > 1e-3


# ----------------------------------------------------------------------------
# Conversion CLI.
# ----------------------------------------------------------------------------


def test_convert_writes_npz_that_loads_like_the_original(resnet18_files, tmp_path):
  _, safetensors_path, pth_path = resnet18_files
  output = tmp_path / "resnet18.npz"
  result = subprocess.run(
      [sys.executable, "-m", "tljax.models.convert", "--model=resnet18",
       f"--input={pth_path}", f"--output={output}", "--overview"],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "params/backbone/layer1_0/conv1/kernel" in result.stdout
  assert "batch_stats/backbone/bn1/mean" in result.stdout
  assert "total: 11,699,112 values" in result.stdout  # 11,689,512 parameters + BN stats

  with np.load(output) as npz:
    assert "params/head/kernel" in npz.files
  target = _shapes(_classifier("resnet18", 32), 32)
  from_npz = checkpoints.load(target, output, backbone="resnet18", dont_load=["head/.*"])
  from_safetensors = checkpoints.load(target, safetensors_path, backbone="resnet18")
  for key, value in _flat(from_safetensors).items():
    if key.startswith("params/head/"):
      continue  # kept from the target, i.e. shapes only
    np.testing.assert_array_equal(_flat(from_npz)[key], value, err_msg=key)


def test_parameter_overview_counts():
  arrays = {"params/a/kernel": np.zeros((3, 4), np.float32),
            "batch_stats/a/mean": np.zeros((4,), np.float32)}
  text = convert.parameter_overview(arrays)
  assert "(3, 4)" in text and "float32" in text
  assert "total: 16 values in 2 arrays (12 parameters, 4 statistics)" in text


# ----------------------------------------------------------------------------
# Benchmark command.
# ----------------------------------------------------------------------------


# torchvision's table: ResNet-18 costs 1.81 G multiply-adds per 224 px image.
RESNET18_MACS_224 = 1.81e9
RESNET18_BACKBONE_PARAMETERS = 11_176_512  # torchvision's 11,689,512 less its 1000-class fc


def _resnet18_train_flops(size: int, images: int) -> float:
  """A training step's FLOPs from the published forward cost: the feature maps
  scale with the image area (exactly for sizes dividing 224 by a power of 2),
  2 FLOPs per multiply-add, and the backward pass twice the forward's."""
  return RESNET18_MACS_224 * (size / 224) ** 2 * 2 * 3 * images


def test_bench_flax_step_runs():
  result = flax_steps.time_flax(cases.Case("backbone", "resnet18", 32, 2), steps=1, warmup=0)
  assert {"step_s", "compile_s", "gflops_per_s", "images_per_s", "peak_source"} <= set(result)
  # XLA's count against the published one (0.84 of it here: the analytic
  # estimate leaves out nothing big, but counts every multiply-add of the stem).
  assert 0.7 < result["flops"] / _resnet18_train_flops(32, 2) < 1.3, result["flops"]
  # The step holds at least the backbone's fp32 parameters.
  assert result["peak_bytes"] >= 4 * RESNET18_BACKBONE_PARAMETERS
  matmul = {"flax": {"gflops_per_s": 100.0, "size": 8, "seconds": 1.0}}
  table = cases.format_table([{"case": "resnet18", "size": 32, "batch": 2, "flax": result}],
                             matmul)
  assert "| resnet18 | 32 | 2 |" in table and "%" in table


def test_bench_frozen_case_differentiates_only_trainable_parameters():
  case = cases.Case("backbone", "resnet18", 32, 2, frozen=cases.FROZEN_STAGES_REGEX)
  step, state, images, labels = flax_steps.build_flax_step(case)
  assert state["frozen"] and all(not key.startswith(("backbone/layer4", "head"))
                                 for key in state["frozen"])
  assert {key.split("/")[1] for key in state["trainable"] if key.startswith("backbone/")} == {
      "layer4_0", "layer4_1"}
  # The step donates its state: keep host copies.
  frozen_before = {key: np.array(value) for key, value in state["frozen"].items()}
  stats_before = jax.tree.map(np.array, state["batch_stats"])
  new_state, loss = step(state, images, labels)
  assert np.isfinite(float(loss))
  for key, value in new_state["frozen"].items():
    np.testing.assert_array_equal(value, frozen_before[key], err_msg=key)
  # Frozen BatchNorm layers keep their statistics; trainable ones move.
  np.testing.assert_array_equal(new_state["batch_stats"]["backbone"]["layer1_0"]["bn1"]["mean"],
                                stats_before["backbone"]["layer1_0"]["bn1"]["mean"])
  assert _max_diff(new_state["batch_stats"]["backbone"]["layer4_0"]["bn1"]["mean"],
                   stats_before["backbone"]["layer4_0"]["bn1"]["mean"]) > 0


def test_gpu_bench_script_runs_tiny_on_cpu(tmp_path):
  """experiments/gpu_bench.sh end to end at smoke-test sizes (any backend)."""
  root = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
      ["bash", str(root / "experiments" / "gpu_bench.sh")], capture_output=True, text=True,
      timeout=600, env={**os.environ, "GPU_BENCH_TINY": "1", "GPU_BENCH_OUT": str(tmp_path),
                        "PYTHONPATH": str(root)})
  assert result.returncode == 0, result.stderr[-3000:]
  text = (tmp_path / "gpu_bench.md").read_text()
  assert "### float32" in text and "### bfloat16" in text and "| small_cnn | 32 | 8 |" in text
  assert "| resnet18 dann + pipeline | 32 | 8 |" in text
  assert "| vit_tiny_patch16 remat | 32 | 8 |" in text
  # Tiny sizes; the second backbone row is the rematerialised ViT's.
  kinds = {"float32": ["backbone", "backbone", "digits", "adapt"],
           "bfloat16": ["backbone", "backbone"]}
  flops = {}
  for dtype in ("float32", "bfloat16"):
    report = json.loads((tmp_path / f"gpu_bench_{dtype}.json").read_text())
    assert [row["kind"] for row in report["rows"]] == kinds[dtype]
    for row in report["rows"]:
      assert row["flax"]["dtype"] == dtype, row["case"]
      flops[dtype, row["case"]] = row["flax"]["flops"]
  # One backbone step in either dtype: the same arithmetic, so XLA counts the
  # same FLOPs (and a small CNN's training step on 8 images is millions of them).
  for case in ("small_cnn", "vit_tiny_patch16 remat"):
    assert flops["bfloat16", case] == pytest.approx(flops["float32", case], rel=0.05), case
    assert flops["float32", case] > 1e6, flops


# ----------------------------------------------------------------------------
# CPU implementations: same functions and gradients as XLA's, bf16, remat.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel,strides,size", [(1, 1, 6), (1, 2, 7), (3, 1, 6), (3, 2, 7),
                                                 (7, 2, 8)])
def test_cpu_conv_matches_xla_convolution_and_gradients(kernel, strides, size):
  from tljax.models import resnet  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 5)), jnp.float32)
  padding = ((kernel // 2, kernel // 2),) * 2
  cotangent = jnp.asarray(rng.normal(size=(2, -(-size // strides), -(-size // strides), 5)),
                          jnp.float32)

  def pullback(conv):
    out, vjp = jax.vjp(lambda x, w: conv(x, w), inputs, weights)
    return (out,) + vjp(cotangent)

  got = jax.jit(lambda: pullback(
      lambda x, w: resnet.cpu_conv(x, w, (strides, strides), padding)))()
  want = jax.jit(lambda: pullback(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (strides, strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))))()
  for name, a, b in zip(("output", "d_inputs", "d_kernel"), got, want):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("batch", [5, 40, 64])
def test_small_cnn_sliced_kernel_gradient_matches_xla(batch):
  """`conv_impl='cpu'`: the kernel gradient summed over slices of 32 examples
  (a last, shorter slice included) equals XLA's, and so do the output and the
  input gradient; the three implementations train to the same parameters."""
  from tljax.models import small_cnn  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.normal(size=(batch, 7, 7, 3)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(batch, 7, 7, 4)), jnp.float32)

  def pullback(conv):
    out, vjp = jax.vjp(conv, inputs, weights)
    return (out,) + vjp(cotangent)

  got = jax.jit(lambda: pullback(small_cnn.conv_sliced_kernel_grad))()
  want = jax.jit(lambda: pullback(small_cnn._xla_conv))()  # pylint: disable=protected-access
  for name, a, b in zip(("output", "d_inputs", "d_kernel"), got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=name)

  images = jnp.asarray(rng.normal(size=(batch, 8, 8, 3)), jnp.float32)
  grads = {}
  for impl in ("cpu", "xla", "im2col"):
    net = small_cnn.SmallCNN(widths=(4, 8), kernel_sizes=(3, 3), conv_impl=impl)
    variables = net.init(jax.random.key(0), images)

    def loss(params, net=net, variables=variables):
      out, _ = net.apply({**variables, "params": params}, images, train=True,
                         mutable=["batch_stats"])
      return jnp.sum(out**2)

    grads[impl] = jax.jit(jax.grad(loss))(variables["params"])
  for impl in ("xla", "im2col"):
    for a, b in zip(jax.tree.leaves(grads["cpu"]), jax.tree.leaves(grads[impl])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=impl)


def test_batch_norm_train_gradients_match_autodiff():
  from tljax.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 4, 4, 5)) * 2 + 1, jnp.float32)
  scale = jnp.asarray(rng.uniform(0.5, 1.5, 5), jnp.float32)
  bias = jnp.asarray(rng.normal(size=5), jnp.float32)

  def reference(x, scale, bias, epsilon):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.maximum(jnp.mean(x * x, (0, 1, 2)) - mean**2, 0.0)
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var

  def loss(norm, x, scale, bias):
    # Cotangents on all three outputs, including the statistics.
    y, mean, var = norm(x, scale, bias, 1e-5)
    return jnp.sum(jnp.sin(y)) + jnp.sum(mean * jnp.arange(5)) + jnp.sum(jnp.cos(var))

  got = jax.grad(lambda *a: loss(layers.batch_norm_train, *a), (0, 1, 2))(x, scale, bias)
  want = jax.grad(lambda *a: loss(reference, *a), (0, 1, 2))(x, scale, bias)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _train_losses(name, size, dtype, steps, **kwargs):
  """Losses of a few SGD steps from the same fp32 weights, in `dtype`."""
  import optax  # pylint: disable=g-import-not-at-top
  model = _classifier(name, size, num_classes=4, dtype=dtype, **kwargs)
  variables = _random_variables(_classifier(name, size, num_classes=4), size)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(8, size, size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 8))
  optimizer = optax.sgd(0.002, momentum=0.9)

  @jax.jit
  def step(params, opt, stats):
    def loss_fn(params):
      (_, logits), updates = model.apply({"params": params, "batch_stats": stats}, images,
                                         train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grad_updates, opt = optimizer.update(grads, opt, params)
    return optax.apply_updates(params, grad_updates), opt, updates.get("batch_stats", {}), loss

  params, stats = variables["params"], variables.get("batch_stats", {})
  opt, losses = optimizer.init(params), []
  for _ in range(steps):
    params, opt, stats, loss = step(params, opt, stats)
    losses.append(float(loss))
  return np.array(losses), params


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16"])
def test_bfloat16_training_tracks_float32(name):
  """bf16 compute, fp32 parameters: the same descent, each loss within 5% of
  the initial one."""
  losses32, _ = _train_losses(name, 32, jnp.float32, steps=4)
  losses16, params16 = _train_losses(name, 32, jnp.bfloat16, steps=4)
  print(f"{name}: fp32 losses {np.round(losses32, 4)}, bf16 {np.round(losses16, 4)}")
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params16))
  np.testing.assert_allclose(losses16, losses32, atol=0.05 * losses32[0])
  assert losses16[-1] < losses16[0]


@pytest.mark.parametrize("name,options", [
    ("resnet18", {"remat": True}), ("vit_tiny_patch16", {"remat": True}),
    ("vit_tiny_patch16", {"scan_blocks": True}),
    ("vit_tiny_patch16", {"scan_blocks": True, "remat": True})])
def test_remat_and_scanned_blocks_give_the_same_training(name, options):
  """Recomputed or scanned blocks: the same network, the same parameters
  (a ViT's scanned blocks keep their unrolled names), the same steps."""
  losses, params = _train_losses(name, 32, jnp.float32, steps=2)
  losses_other, params_other = _train_losses(name, 32, jnp.float32, steps=2, **options)
  np.testing.assert_allclose(losses_other, losses, rtol=1e-5)
  assert jax.tree.structure(params_other) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params_other), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_scanned_vit_blocks_hold_one_block_of_activations():
  """XLA's own account of the compiled ViT step's temporaries: remat with
  scanned blocks keeps one block's activations (plus each block's input),
  unrolled remat keeps them all on XLA:CPU. ViT-Ti/16 at 112 px, batch 16
  (activations, not the parameters that scanning stacks, dominate there);
  compiled, not run."""
  import optax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(16, 112, 112, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 16))

  def temp_bytes(**options):
    model = _classifier("vit_tiny_patch16", 112, num_classes=4, **options)
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]

    def loss_fn(params):
      _, logits = model.apply({"params": params}, images, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    compiled = jax.jit(jax.grad(loss_fn)).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  plain, scanned = temp_bytes(), temp_bytes(remat=True, scan_blocks=True)
  print(f"temporaries: plain {plain / 2**20:.1f} MiB, remat + scanned blocks "
        f"{scanned / 2**20:.1f} MiB")
  assert scanned < 0.5 * plain


def test_resnet_conv_impls_agree():
  """'cpu' (hand-written gradients) and 'xla' train the same network."""
  losses_cpu, params_cpu = _train_losses("resnet18", 32, jnp.float32, steps=2, conv_impl="cpu")
  losses_xla, params_xla = _train_losses("resnet18", 32, jnp.float32, steps=2, conv_impl="xla")
  np.testing.assert_allclose(losses_cpu, losses_xla, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params_cpu), jax.tree.leaves(params_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_profile_puts_resnet_ops_in_categories():
  result = profiling.profile_flax("resnet18", 32, 2)
  # On CPU the kernel gradients are im2col matmuls (`conv_impl='cpu'`).
  for category in ("conv forward", "conv input grad", "batch norm forward",
                   "batch norm backward", "matmul forward", "matmul backward"):
    assert any(name.startswith(category) for name in result["ms"]), (category, result["ms"])
  assert "| flax category | ms | share | ops |" in profiling.format_profile(result, "flax")


def test_profile_of_a_methods_digits_step():
  """`--digits=METHOD`: the whole jitted train step, each op at its fastest of
  `repeats` traced calls, in the same categories."""
  result = profiling.profile_flax_digits("dann", 8, repeats=2)
  for category in ("conv forward", "conv kernel grad", "batch norm", "matmul forward"):
    assert any(name.startswith(category) for name in result["ms"]), (category, result["ms"])
  # Every timed category has its op count, and nothing else is counted.
  assert sorted(result["ms"]) == sorted(result["count"]) and {"step_s", "cpu_s"} <= set(result)


def test_bench_adaptation_rows_take_their_batches_from_the_pipelines(tmp_path):
  """An adaptation row: tljax's DANN step on an Office-31-layout folder of JPEGs,
  through the trainer's input pipeline, and TLlib's iteration (DataLoader with
  its transforms, a worker process) in PyTorch; both count a step's FLOPs."""
  torch_steps = pytest.importorskip("benchmarks.torch_steps")
  torch_reference = pytest.importorskip("benchmarks.torch_reference")
  case = cases.Case("adapt", "resnet18", 32, 8, method="dann")  # 8: the simulated devices
  config = cases.adapt_config(case, str(tmp_path), threads=1)
  assert (config.model.name, config.data.image_size, config.batch_size) == ("resnet18", 32, 8)
  office31_like.write_adapt_data(str(tmp_path), config, num_images=31)
  for domain in ("amazon", "webcam"):  # Office-31's layout: <domain>/images/<class>/*.jpg
    assert len(list((tmp_path / "office31" / domain / "images").glob("*/*.jpg"))) == 31
  ours = flax_steps.time_flax_adapt(case, 2, 0, data_dir=str(tmp_path), threads=1)
  theirs = torch_steps.time_torch_adapt(case, 2, 0, data_dir=str(tmp_path), threads=1)
  for result in (ours, theirs):
    assert {"step_s", "images_per_s", "flops"} <= set(result)
  # Each framework's count against the published cost of the step's 8 + 8 ResNet-18
  # images (the domain discriminator adds little), and against each other.
  for result in (ours, theirs):
    assert 0.7 < result["flops"] / _resnet18_train_flops(32, 16) < 1.3, result["flops"]
  assert 0.5 < ours["flops"] / theirs["flops"] < 2, (ours["flops"], theirs["flops"])
  image = torch_reference.tllib_train_transform(32)(
      PIL.Image.new("RGB", (300, 200), (255, 0, 0)))
  assert tuple(image.shape) == (3, 32, 32)
  np.testing.assert_allclose(image[:, 0, 0].numpy(), [(1 - .485) / .229, -.456 / .224,
                                                      -.406 / .225], rtol=1e-5)


def test_bench_digits_rows_time_a_method_in_both_frameworks():
  """A digits row: tljax's DANN step and the PyTorch restatement of TLlib's, each
  timed with its FLOPs (the two counts of the same step agree in magnitude)."""
  torch_steps = pytest.importorskip("benchmarks.torch_steps")
  case = cases.Case("digits", "dann", 28, 8, label="digits dann")  # 8: the simulated devices
  ours = flax_steps.time_flax_digits(case, steps=1, warmup=0)
  theirs = torch_steps.time_torch_digits(case, steps=1, warmup=0)
  for result in (ours, theirs):
    assert {"step_s", "images_per_s", "flops"} <= set(result)
  # Two counts of the same step, by XLA and by PyTorch's FLOP counter.
  assert 0.5 < ours["flops"] / theirs["flops"] < 2, (ours["flops"], theirs["flops"])
  assert ours["flops"] > 1e6, ours["flops"]
  assert torch_steps.digits_supported("cdan_mcc") and torch_steps.digits_supported("source_only")
  assert not torch_steps.digits_supported("mcd")
  # Adaptation rows read the method's office31 config.
  adapt = lambda m: cases.Case("adapt", "resnet18", 32, 4, method=m)  # pylint: disable=unnecessary-lambda-assignment
  assert torch_steps.case_supported(adapt("cdan_mcc"))
  assert torch_steps.case_supported(adapt("source_only"))
  assert not torch_steps.case_supported(adapt("mcd"))
  table = cases.format_table([{"case": case.name, "size": 28, "batch": 8, "flax": ours,
                               "torch": theirs}], {})
  assert "digits dann" in table
