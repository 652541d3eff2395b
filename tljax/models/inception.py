"""Inception-v3 backbone in torchvision's layout, registered as `inception_v3`.

The network is torchvision's `Inception3` (Szegedy et al., "Rethinking the
Inception Architecture for Computer Vision", 2016) without its classifier:
a stem of `BasicConv2d`s (convolution without bias, BatchNorm with eps 1e-3,
ReLU) and two unpadded 3x3/2 max pools, the Inception blocks `Mixed_5b` ...
`Mixed_7c`, and a global average pool to `(B, 2048)` features. Dropout and `fc`
are the `Classifier`'s head, as for ResNet.

Module names are the state-dict keys with '/' for '.', e.g.
`Mixed_5b.branch1x1.conv.weight` -> `Mixed_5b/branch1x1/conv/kernel` and
`Mixed_5b.branch1x1.bn.running_mean` -> `batch_stats/.../Mixed_5b/branch1x1/bn/
mean`, so torchvision checkpoints load one to one through
`tljax.models.checkpoints` and freezing works by regex, e.g.
`backbone/(Conv2d_.*|Mixed_5.*)/.*`.

Images are NHWC, 299 px for the ImageNet weights, any size from 75 px up (as
torchvision). The pretrained IMAGENET1K_V1 weights are Google's, trained on
images scaled to [-1, 1]: build with `transform_input=True` to feed them
ImageNet-normalised images, as torchvision does.

The auxiliary classifier (`aux_logits=True`, torchvision's `InceptionAux` on
`Mixed_6e`) runs only in training and leaves the return type alone: its logits
are sown into the `intermediates` collection, i.e.

    (features, logits), updates = classifier.apply(
        variables, images, train=True, mutable=["batch_stats", "intermediates"],
        rngs={"dropout": rng})
    aux_logits = updates["intermediates"]["backbone"]["aux_logits"][0]

and `config.model.aux_loss_weight` (0.4, torchvision's reference recipe, in
`configs/finetune.py:office31_inception`) makes the labelled loss
`cross_entropy(logits) + 0.4 * cross_entropy(aux_logits)`
(`tljax.methods.base.StepContext.auxiliary_loss`). Its 5x5 convolution
needs a 17x17 `Mixed_6e` map, i.e. training images of at least 299 px. Its
`fc` predicts the task's classes (`create_classifier` sets `num_classes`), so
when fine-tuning from ImageNet weights it keeps its initialisation like the
head: `dont_load=["head/.*", "backbone/AuxLogits/fc/.*"]`. Without the head,
skip its weights with `dont_load=["backbone/AuxLogits/.*"]`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tljax.models import register
from tljax.models.layers import BatchNorm, torch_linear_init
from tljax.models.resnet import pointwise_conv_as_dot

# Top-level modules of torchvision's `Inception3` whose weights the backbone
# holds (`fc` is the classifier's head); the checkpoint translation accepts
# state-dict keys under these names only.
TORCHVISION_MODULES = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AuxLogits")
# torchvision's `min_size` for Inception-v3: smaller inputs vanish in the stem.
MIN_IMAGE_SIZE = 75
# The auxiliary head pools `Mixed_6e` 5x5/3 and then applies a 5x5 convolution
# without padding, so the map must be at least 17x17 (299 px images).
AUX_MIN_MAP = 17
# `transform_input`: per-channel `x * scale + shift` taking images normalised
# with the ImageNet mean/std to the [-1, 1] scaling the Google weights expect.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision draws weights from trunc_normal_(std, a=-2, b=2): the bounds are
# absolute, i.e. 20 standard deviations, so this is a normal distribution.
_conv_init = nn.initializers.normal(0.1)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class _Kernel(nn.Module):
  """A convolution kernel `kernel` (HWIO, fp32), named and shaped as `nn.Conv`'s."""

  features: int
  kernel_size: tuple[int, int]
  kernel_init: Any

  @nn.compact
  def __call__(self, in_features: int) -> jax.Array:
    return self.param("kernel", self.kernel_init, (*self.kernel_size, in_features, self.features),
                      jnp.float32)


def _convolve(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
              padding: tuple[int, int], dtype: Any) -> jax.Array:
  """Convolution with torch's symmetric padding, in `dtype`; 1x1 kernels as
  matrix products (see `pointwise_conv_as_dot`).

  On CPUs, an unpadded stride-1 convolution runs as a "same"-padded one with
  the border cropped, the same sums: XLA:CPU (jax 0.10) computes the unpadded
  3x3 convolutions of the stem 2-4x slower than padded ones of the same size
  (Conv2d_4a_3x3 alone took 40% of a 299-px forward pass). Only where the
  border adds little work; not for the auxiliary head's 5x5 on a 5x5 map.
  """
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  kernel_h, kernel_w = kernel.shape[:2]
  crop = None
  if (tuple(strides) == (1, 1) and tuple(padding) == (0, 0) and (kernel_h, kernel_w) != (1, 1)
      and kernel_h % 2 == 1 and kernel_w % 2 == 1 and jax.default_backend() == "cpu"):
    height, width = x.shape[1:3]
    valid_outputs = (height - kernel_h + 1) * (width - kernel_w + 1)
    if valid_outputs > 0 and height * width <= 1.25 * valid_outputs:
      crop = padding = (kernel_h // 2, kernel_w // 2)
  numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  y = pointwise_conv_as_dot(x, kernel, strides, [(pad, pad) for pad in padding],
                            dimension_numbers=numbers)
  if crop is not None:
    y = y[:, crop[0]:y.shape[1] - crop[0], crop[1]:y.shape[2] - crop[1]]
  return y


class BasicConv2d(nn.Module):
  """Convolution without bias, BatchNorm (eps 1e-3), ReLU: torchvision's unit.

  Besides `__call__`, the two halves are separate methods, so that a block can
  compute several 1x1 units that read the same input as one matrix product
  (`_pointwise`): `kernel` gives the convolution kernel, `activate` normalises
  and rectifies its output.

  Attributes:
    features: output channels.
    kernel_size: `k` or `(kh, kw)`.
    strides: stride of the convolution.
    padding: torch's symmetric padding, `p` or `(ph, pw)`.
    kernel_init: initialiser of the convolution kernel.
    frozen_norm: regex of BatchNorm paths that keep running statistics.
    dtype: compute dtype.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int = 1
  padding: int | Sequence[int] = 0
  kernel_init: Any = _conv_init
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  def setup(self):
    self.conv = _Kernel(self.features, _pair(self.kernel_size), self.kernel_init)
    # torch's momentum 0.1 weights the new batch; flax's weights the old average.
    self.bn = BatchNorm(frozen=self.frozen_norm, momentum=0.9, epsilon=1e-3, dtype=self.dtype,
                        param_dtype=jnp.float32)

  def kernel(self, in_features: int) -> jax.Array:
    return self.conv(in_features)

  def activate(self, y: jax.Array, train: bool = False) -> jax.Array:
    return nn.relu(self.bn(y, train))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = _convolve(x, self.kernel(x.shape[-1]), _pair(self.strides), _pair(self.padding),
                  self.dtype)
    return self.activate(y, train)


def _pointwise(x: jax.Array, units: Sequence[BasicConv2d], train: bool, *,
               pooled: BasicConv2d | None = None) -> list[jax.Array]:
  """The 1x1 `units` (and `pooled`, the pooling branch) of a block on its input.

  Their convolutions run as one matrix product with the kernels side by side,
  which makes one large product of several small ones and reads `x` once.
  The pooling branch is torchvision's `pooled(avg_pool(x))`; average pooling
  (zero padding counted) and a 1x1 convolution without bias are both linear
  and act on different axes, so they commute, and pooling the branch's few
  output channels instead of all of `x`'s is cheaper.
  """
  units = list(units) + ([pooled] if pooled is not None else [])
  kernels = [unit.kernel(x.shape[-1]) for unit in units]
  y = _convolve(x, jnp.concatenate(kernels, axis=-1), (1, 1), (0, 0), units[0].dtype)
  splits = np.cumsum([kernel.shape[-1] for kernel in kernels])[:-1]
  outputs = jnp.split(y, splits, axis=-1)
  if pooled is not None:
    outputs[-1] = _branch_avg_pool(outputs[-1])
  return [unit.activate(output, train) for unit, output in zip(units, outputs)]


def _branch_avg_pool(x: jax.Array) -> jax.Array:
  """`F.avg_pool2d(x, 3, stride=1, padding=1)`: zero padding counted in the
  mean (torch's `count_include_pad=True`), so border pixels are damped."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=True)


def _global_avg_pool(x: jax.Array, dtype: Any) -> jax.Array:
  """`(B, H, W, C)` -> `(B, C)` in `dtype`, summed in at least fp32 so that
  bf16 runs do not lose precision in the sum (and fp64 runs stay fp64)."""
  return jnp.mean(x.astype(jnp.promote_types(dtype, jnp.float32)), axis=(1, 2)).astype(dtype)


def _max_pool(x: jax.Array) -> jax.Array:
  """torch's `max_pool2d(x, 3, stride=2)`: unpadded, floor of the output size."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
  """Common attributes of the Inception blocks."""

  frozen_norm: str = ""
  dtype: Any = jnp.float32

  def conv(self, features: int, kernel_size, name: str, **kwargs) -> BasicConv2d:
    return BasicConv2d(features, kernel_size, frozen_norm=self.frozen_norm, dtype=self.dtype,
                       name=name, **kwargs)


class InceptionA(_Block):
  """`Mixed_5b`-`5d`: 1x1, 5x5, double 3x3 and pooled branches (35x35 maps)."""

  pool_features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    branch1x1, branch5x5, branch3x3dbl, branch_pool = _pointwise(
        x, [self.conv(64, 1, "branch1x1"), self.conv(48, 1, "branch5x5_1"),
            self.conv(64, 1, "branch3x3dbl_1")], train,
        pooled=self.conv(self.pool_features, 1, "branch_pool"))
    branch5x5 = self.conv(64, 5, "branch5x5_2", padding=2)(branch5x5, train)
    branch3x3dbl = self.conv(96, 3, "branch3x3dbl_2", padding=1)(branch3x3dbl, train)
    branch3x3dbl = self.conv(96, 3, "branch3x3dbl_3", padding=1)(branch3x3dbl, train)
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(_Block):
  """`Mixed_6a`: grid reduction 35 -> 17 by strided 3x3 branches and max pooling."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    branch3x3 = self.conv(384, 3, "branch3x3", strides=2)(x, train)
    branch3x3dbl = self.conv(64, 1, "branch3x3dbl_1")(x, train)
    branch3x3dbl = self.conv(96, 3, "branch3x3dbl_2", padding=1)(branch3x3dbl, train)
    branch3x3dbl = self.conv(96, 3, "branch3x3dbl_3", strides=2)(branch3x3dbl, train)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool(x)], axis=-1)


class InceptionC(_Block):
  """`Mixed_6b`-`6e`: 7x7 convolutions factorised into 1x7 and 7x1 (17x17 maps)."""

  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1, branch7x7, branch7x7dbl, branch_pool = _pointwise(
        x, [self.conv(192, 1, "branch1x1"), self.conv(c7, 1, "branch7x7_1"),
            self.conv(c7, 1, "branch7x7dbl_1")], train,
        pooled=self.conv(192, 1, "branch_pool"))
    branch7x7 = self.conv(c7, (1, 7), "branch7x7_2", padding=(0, 3))(branch7x7, train)
    branch7x7 = self.conv(192, (7, 1), "branch7x7_3", padding=(3, 0))(branch7x7, train)
    branch7x7dbl = self.conv(c7, (7, 1), "branch7x7dbl_2", padding=(3, 0))(branch7x7dbl, train)
    branch7x7dbl = self.conv(c7, (1, 7), "branch7x7dbl_3", padding=(0, 3))(branch7x7dbl, train)
    branch7x7dbl = self.conv(c7, (7, 1), "branch7x7dbl_4", padding=(3, 0))(branch7x7dbl, train)
    branch7x7dbl = self.conv(192, (1, 7), "branch7x7dbl_5", padding=(0, 3))(branch7x7dbl, train)
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(_Block):
  """`Mixed_7a`: grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    branch3x3, branch7x7x3 = _pointwise(
        x, [self.conv(192, 1, "branch3x3_1"), self.conv(192, 1, "branch7x7x3_1")], train)
    branch3x3 = self.conv(320, 3, "branch3x3_2", strides=2)(branch3x3, train)
    branch7x7x3 = self.conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(branch7x7x3, train)
    branch7x7x3 = self.conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(branch7x7x3, train)
    branch7x7x3 = self.conv(192, 3, "branch7x7x3_4", strides=2)(branch7x7x3, train)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool(x)], axis=-1)


class InceptionE(_Block):
  """`Mixed_7b`/`7c`: 3x3 convolutions split into parallel 1x3 and 3x1 (8x8 maps)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    branch1x1, branch3x3, branch3x3dbl, branch_pool = _pointwise(
        x, [self.conv(320, 1, "branch1x1"), self.conv(384, 1, "branch3x3_1"),
            self.conv(448, 1, "branch3x3dbl_1")], train,
        pooled=self.conv(192, 1, "branch_pool"))
    branch3x3 = jnp.concatenate([
        self.conv(384, (1, 3), "branch3x3_2a", padding=(0, 1))(branch3x3, train),
        self.conv(384, (3, 1), "branch3x3_2b", padding=(1, 0))(branch3x3, train),
    ], axis=-1)
    branch3x3dbl = self.conv(384, 3, "branch3x3dbl_2", padding=1)(branch3x3dbl, train)
    branch3x3dbl = jnp.concatenate([
        self.conv(384, (1, 3), "branch3x3dbl_3a", padding=(0, 1))(branch3x3dbl, train),
        self.conv(384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))(branch3x3dbl, train),
    ], axis=-1)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionAux(_Block):
  """torchvision's auxiliary classifier on the 17x17 `Mixed_6e` map.

  5x5/3 average pooling, a 1x1 and a 5x5 `BasicConv2d`, global average pooling
  (torchvision's adaptive pooling to 1x1, which matters above 299 px) and `fc`.
  """

  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding="VALID")
    x = self.conv(128, 1, "conv0")(x, train)
    x = self.conv(768, 5, "conv1", kernel_init=nn.initializers.normal(0.01))(x, train)
    x = _global_avg_pool(x, self.dtype)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.001),
                    bias_init=torch_linear_init(768), dtype=self.dtype,
                    param_dtype=jnp.float32, name="fc")(x)


class InceptionV3(nn.Module):
  """Inception-v3 trunk; returns `(B, 2048)` globally average-pooled features.

  Attributes:
    aux_logits: build torchvision's auxiliary classifier (`AuxLogits`) on
      `Mixed_6e`. It runs when `train=True` and sows its logits as
      `intermediates/.../aux_logits` (see the module doc); in evaluation it is
      skipped, as in torchvision.
    num_classes: classes of the auxiliary classifier (`create_classifier`
      passes the task's).
    transform_input: rescale ImageNet-normalised images to [-1, 1] per channel
      first, as torchvision's `transform_input` (True for the IMAGENET1K_V1
      weights).
    frozen_norm: regex of BatchNorm paths (e.g. `backbone/.*`) that normalise
      with their running statistics even when `train=True`.
    dtype: compute dtype (parameters are always fp32).
  """

  aux_logits: bool = False
  num_classes: int = 1000
  transform_input: bool = False
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  features_dim = 2048

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Maps `(B, H, W, 3)` images (H, W >= 75) to `(B, 2048)` pooled features."""
    if min(images.shape[1:3]) < MIN_IMAGE_SIZE:
      raise ValueError(f"inception_v3 needs images of at least {MIN_IMAGE_SIZE}x"
                       f"{MIN_IMAGE_SIZE} px, got {images.shape[1]}x{images.shape[2]}")
    x = images
    if self.transform_input:
      scale = jnp.asarray([std / 0.5 for std in _IMAGENET_STD], x.dtype)
      shift = jnp.asarray([(mean - 0.5) / 0.5 for mean in _IMAGENET_MEAN], x.dtype)
      x = x * scale + shift
    conv = functools.partial(BasicConv2d, frozen_norm=self.frozen_norm, dtype=self.dtype)
    x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x, train)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x, train)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x, train)
    x = _max_pool(x)
    x = conv(80, 1, name="Conv2d_3b_1x1")(x, train)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x, train)
    x = _max_pool(x)
    common = dict(frozen_norm=self.frozen_norm, dtype=self.dtype)
    x = InceptionA(pool_features=32, name="Mixed_5b", **common)(x, train)
    x = InceptionA(pool_features=64, name="Mixed_5c", **common)(x, train)
    x = InceptionA(pool_features=64, name="Mixed_5d", **common)(x, train)
    x = InceptionB(name="Mixed_6a", **common)(x, train)
    x = InceptionC(channels_7x7=128, name="Mixed_6b", **common)(x, train)
    x = InceptionC(channels_7x7=160, name="Mixed_6c", **common)(x, train)
    x = InceptionC(channels_7x7=160, name="Mixed_6d", **common)(x, train)
    x = InceptionC(channels_7x7=192, name="Mixed_6e", **common)(x, train)
    if self.aux_logits:
      self._auxiliary(x, train, common)
    x = InceptionD(name="Mixed_7a", **common)(x, train)
    x = InceptionE(name="Mixed_7b", **common)(x, train)
    x = InceptionE(name="Mixed_7c", **common)(x, train)
    return _global_avg_pool(x, self.dtype)

  def _auxiliary(self, x: jax.Array, train: bool, common: dict) -> None:
    """Runs `AuxLogits` in training (and at initialisation, to create its
    variables) and sows its logits in training."""
    initializing = self.is_initializing()
    if not (train or initializing):
      return
    if min(x.shape[1:3]) < AUX_MIN_MAP:
      if not initializing:
        raise ValueError(
            f"aux_logits needs a {AUX_MIN_MAP}x{AUX_MIN_MAP} Mixed_6e map in training, "
            f"i.e. images of at least 299 px; got a {x.shape[1]}x{x.shape[2]} map. "
            "Train on larger images or build the model with aux_logits=False.")
      # The head's variables do not depend on the map size; a stand-in lets a
      # model with the head be initialised (and evaluated) on small images.
      x = jnp.zeros((x.shape[0], AUX_MIN_MAP, AUX_MIN_MAP, x.shape[-1]), x.dtype)
    aux = InceptionAux(num_classes=self.num_classes, name="AuxLogits", **common)(x, train)
    if train and not initializing:
      self.sow("intermediates", "aux_logits", aux.astype(jnp.float32))


@register("inception_v3")
def inception_v3(*, dtype: Any = jnp.float32, frozen_norm: str = "", aux_logits: bool = False,
                 num_classes: int = 1000, transform_input: bool = False) -> InceptionV3:
  return InceptionV3(aux_logits=aux_logits, num_classes=num_classes,
                     transform_input=transform_input, frozen_norm=frozen_norm, dtype=dtype)
