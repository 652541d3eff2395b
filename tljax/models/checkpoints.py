"""Pretrained weights into an initialised tljax variable tree.

The flow is big_vision's: read a checkpoint, translate its names into tljax's,
then merge what it has into the freshly initialised tree, keeping the
initialisation where `dont_load` says so:

    variables = model.init(rng, images)
    variables = checkpoints.load(variables, "resnet50.safetensors",
                                 backbone="resnet50", dont_load=["head/.*"])

Readable files:
  * PyTorch state dicts with torchvision (ResNet, VGG, Inception-v3) or timm
    (ViT) key names,
    as `.safetensors` (read with numpy) or `.pth`/`.pt`/`.bin` (zip or legacy
    `torch.save` files, read by `torch_pickle` with an allow-list, the rule of
    `torch.load(..., weights_only=True)`: a pickle that would run code is
    refused). Neither needs PyTorch.
  * big_vision / AugReg ViT `.npz` files (both the current names and the older
    `MultiHeadDotProductAttention_1` / `MlpBlock_3` / `posembed_input` ones, and
    scanned `Transformer/encoderblock` stacks).
  * `.npz` files written by `python -m tljax.models.convert`, which hold the
    already translated flat tree (`params/backbone/...`, `batch_stats/...`).

Translation from torch (module path, then parameter):
  * `a.b.weight` of a convolution (4-d) -> `a/b/kernel`, OIHW -> HWIO; of a
    linear layer (2-d) -> `kernel`, transposed; of a norm (1-d) -> `scale`.
    `bias` -> `bias`; BatchNorm `running_mean`/`running_var` ->
    `batch_stats/.../mean`/`var`; `num_batches_tracked` is skipped.
  * ResNet: `layer1.0.conv1` -> `layer1_0/conv1`, `layer1.0.downsample.0`/`.1`
    -> `layer1_0/downsample_conv`/`downsample_bn`, `fc` -> head.
  * VGG: `features.{i}` -> `block{b}/conv{c}`, `classifier.0`/`.3` ->
    `fc6`/`fc7` (rows of `fc6` permuted from NCHW to NHWC flattening),
    `classifier.6` -> head.
  * Inception-v3: the module path with '/' for '.' (`Mixed_5b.branch1x1.conv`
    -> `Mixed_5b/branch1x1/conv`, `AuxLogits.fc` -> `AuxLogits/fc`), `fc` ->
    head. The auxiliary classifier's weights need a model built with
    `aux_logits=True`; for one without, skip them with
    `dont_load=["backbone/AuxLogits/.*"]`.
  * ViT (timm): `patch_embed.proj` -> `embedding`, `blocks.{i}` ->
    `Transformer/encoderblock_{i}` with `norm1`/`norm2` -> `LayerNorm_0`/`_1`,
    `attn.qkv` split into `MultiHeadDotProductAttention_0/{query,key,value}`
    (kernels `(D, heads, head_dim)`), `attn.proj` -> `.../out`, `mlp.fc1`/`fc2`
    -> `MlpBlock_0/Dense_0`/`_1`, `norm` -> `Transformer/encoder_norm`,
    `head` -> head. timm's `pos_embed` has a slot for the class token; it is
    added to `cls_token` to form `cls`, and the rest becomes `pos_embedding`
    (the same function, see `tljax.models.vit`).

The head: a checkpoint's classification layer (torchvision `fc` /
`classifier.6`, timm or big_vision `head`) is translated to `params/head/...`,
the `Classifier`'s head. It is skipped unless `load_head=True`, in which case it
must match the model's head shape (same number of classes, no bottleneck).

Targets: a `Classifier`'s tree (checkpoint backbone weights go under
`backbone/`) or a bare backbone's tree (recognised by the absence of a
`backbone` scope; the weights go to the top level and there is no head).

Damaged files: a missing file is a `FileNotFoundError`; a file that is not of
its format, is truncated, is corrupt where the format can tell (the
safetensors header, the zip directory of `.pth`/`.npz`, the CRCs of `.npz`),
or holds NaN or infinite weights (what overwritten float bytes usually
become), is a `ValueError` naming the file and the problem, on one line.

Strictness: every backbone variable must come from the checkpoint unless a
`dont_load` regex matches it, every checkpoint entry must find a variable
(except the skipped ones above and those a `dont_load` regex matches), and
shapes must agree, except ViT position embeddings, which are resampled
bilinearly to the model's grid. All problems are reported together in one
`ValueError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable, Mapping

from absl import logging
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from tljax import models
from tljax import workdir as workdir_lib
from tljax.models import inception as inception_lib
from tljax.models import torch_pickle
from tljax.models import vgg as vgg_lib
from tljax.models import vit as vit_lib

# What the merge looks at per leaf: `.shape` and `.dtype` (arrays or
# `jax.ShapeDtypeStruct`s).
Variables = Mapping[str, Any]

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_HEAD = "params/head/"
# How many names an error lists per problem before summarising the rest.
_MAX_LISTED = 40


@dataclasses.dataclass
class Checkpoint:
  """A checkpoint translated into tljax's flat naming.

  Attributes:
    arrays: '/'-joined tljax paths with collection (`params/backbone/conv1/
      kernel`, `batch_stats/backbone/bn1/mean`, `params/head/kernel`) ->
      arrays.
    skipped: original names deliberately not translated (`num_batches_tracked`).
    unknown: original names the translator does not know; they make loading
      fail, as unexpected keys.
  """

  arrays: dict[str, np.ndarray]
  skipped: list[str] = dataclasses.field(default_factory=list)
  unknown: list[str] = dataclasses.field(default_factory=list)

  @property
  def has_head(self) -> bool:
    return any(key.startswith(_HEAD) for key in self.arrays)


# ----------------------------------------------------------------------------
# Public entry points.
# ----------------------------------------------------------------------------


def load(init_variables: Variables, path: str, *, backbone: str,
         dont_load: Iterable[str] = (), load_head: bool = False) -> dict[str, Any]:
  """Returns `init_variables` with the checkpoint at `path` merged in.

  Args:
    init_variables: freshly initialised `{'params': ..., 'batch_stats': ...}` of
      a `Classifier` (or of a bare backbone).
    path: `.safetensors`, `.pth`/`.pt`/`.bin` or `.npz` file (see module doc),
      or a tljax run: its workdir (latest checkpoint) or
      `<workdir>/checkpoints/<step>`, whose classifier is loaded whole
      (backbone, bottleneck, head and BatchNorm statistics) except `dont_load`.
    backbone: registry name of the backbone (e.g. `resnet50`,
      `vit_base_patch16`); picks the translation of torch and npz names.
    dont_load: regexes (`re.fullmatch`) over '/'-joined variable paths without
      the collection, e.g. `head/.*` or `backbone/layer4_2/.*`; matching
      variables keep their initialisation, and matching checkpoint entries
      that the model lacks are skipped (e.g. `backbone/AuxLogits/.*` for an
      Inception-v3 built without its auxiliary classifier).
    load_head: also load the checkpoint's classification layer into `head`.

  Returns:
    A new variable tree (same structure, dtypes and shardings as
    `init_variables`).

  Raises:
    FileNotFoundError: there is no file at `path`.
    ValueError: on missing, unexpected or mis-shaped variables, or a file that
      is not a plain weights file, or is truncated or corrupt.
  """
  flat_init = flax.traverse_util.flatten_dict(dict(init_variables), sep="/")
  if workdir_lib.is_workdir(path):
    # A tljax run: the whole classifier (backbone, bottleneck, head) it trained.
    variables, path = workdir_lib.classifier_variables(path)
    checkpoint = Checkpoint(flax.traverse_util.flatten_dict(variables, sep="/"))
    loaded = match(flat_init, checkpoint, dont_load=dont_load, whole_model=True, source=path)
  else:
    checkpoint = read(path, backbone=backbone)
    if "_ibn_" in backbone and is_plain_resnet(checkpoint):
      checkpoint, fresh = resnet_into_ibn(checkpoint, flat_init)
      dont_load = (*dont_load, *fresh)
    loaded = match(flat_init, checkpoint, dont_load=dont_load, load_head=load_head,
                   source=path)
  merged = {}
  for key, init in flat_init.items():
    if key not in loaded:
      merged[key] = init
    elif isinstance(init, jax.Array):
      # Keep the initialised placement, e.g. replicated over a mesh.
      merged[key] = jax.device_put(loaded[key], init.sharding)
    else:
      merged[key] = jnp.asarray(loaded[key])
  logging.info("Loaded %d of %d variables from %s (kept %d initialised).",
               len(loaded), len(flat_init), path, len(flat_init) - len(loaded))
  return flax.traverse_util.unflatten_dict(merged, sep="/")


def read(path: str, *, backbone: str) -> Checkpoint:
  """Reads a checkpoint file and translates it to tljax names (see module doc)."""
  path = os.fspath(path)
  if not path.endswith((".safetensors", ".npz") + TORCH_SUFFIXES):
    raise ValueError(f"{path}: unknown checkpoint format; expected .safetensors, "
                     f"{', '.join(TORCH_SUFFIXES)} or .npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist: set config.model.init to "
                            "the path of the pretrained weights file")
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {path} is not a file: set config.model.init to the path "
                     "of the pretrained weights file itself")
  if path.endswith(".safetensors"):
    return convert_torch_state_dict(_checked_finite(path, _read_safetensors(path)), backbone)
  if path.endswith(TORCH_SUFFIXES):
    return convert_torch_state_dict(_checked_finite(path, _read_torch(path)), backbone)
  arrays = _checked_finite(path, _read_npz(path))
  if any(key.startswith(("params/backbone/", "batch_stats/backbone/")) for key in arrays):
    return Checkpoint(arrays)  # Written by tljax.models.convert.
  if _family(backbone) != "vit":
    raise ValueError(f"{path}: foreign .npz files are read as big_vision ViTs, "
                     f"but backbone={backbone!r}")
  return convert_big_vision_vit(arrays)


def match(target: Mapping[str, Any], checkpoint: Checkpoint, *,
          dont_load: Iterable[str] = (), load_head: bool = False,
          whole_model: bool = False, source: str = "checkpoint") -> dict[str, np.ndarray]:
  """Checks a translated checkpoint against a flat target; returns what to load.

  Args:
    target: '/'-joined paths with collection -> leaves with `.shape`/`.dtype`
      (arrays or `jax.ShapeDtypeStruct`s).
    checkpoint: from `read`.
    dont_load: regexes over paths without the collection; see `load`.
    load_head: whether the checkpoint's head is loaded or skipped.
    whole_model: every target variable is expected (a tljax classifier's own
      checkpoint), not only the backbone's.
    source: name of the checkpoint for messages.

  Returns:
    target path -> array in the target's dtype, for every variable to load.
  """
  patterns = [re.compile(pattern) for pattern in dont_load]
  arrays = dict(checkpoint.arrays)
  bare_backbone = not whole_model and not any(_inner(key).startswith("backbone/") for key in target)
  if whole_model:
    load_head = True
  if bare_backbone:
    if load_head:
      raise ValueError("load_head=True, but the target is a bare backbone "
                       "without a head")
    arrays = {key.replace("/backbone/", "/", 1): value for key, value in arrays.items()
              if not key.startswith(_HEAD)}
  if not load_head:
    arrays = {key: value for key, value in arrays.items() if not key.startswith(_HEAD)}

  expected = [key for key in target
              if whole_model or bare_backbone or _inner(key).startswith("backbone/")
              or (load_head and key.startswith(_HEAD))]
  loaded, missing, mismatched, kept = {}, [], [], []
  for key in expected:
    if any(pattern.fullmatch(_inner(key)) for pattern in patterns):
      kept.append(key)
      continue
    if key not in arrays:
      missing.append(key)
      continue
    value, want = arrays[key], target[key]
    if key.endswith("pos_embedding") and value.shape != tuple(want.shape):
      value = _resample_posemb(key, value, tuple(want.shape))
    if value.shape != tuple(want.shape):
      mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model "
                        f"{tuple(want.shape)}")
      continue
    loaded[key] = np.asarray(value).astype(want.dtype)
  unexpected, ignored = [], []
  for key in arrays:
    if key not in target:
      ignored_by_pattern = any(pattern.fullmatch(_inner(key)) for pattern in patterns)
      (ignored if ignored_by_pattern else unexpected).append(key)
  unexpected += [f"{name} (untranslated)" for name in checkpoint.unknown]

  if missing or unexpected or mismatched:
    problems = []
    if not loaded and missing and unexpected:
      problems.append("no checkpoint entry matches a model variable: is it a checkpoint of "
                      "this backbone?")
    for title, names in (("shape mismatches", mismatched),
                         ("missing from the checkpoint", missing),
                         ("unexpected in the checkpoint", unexpected)):
      if names:
        problems.append(f"{len(names)} {title}:\n  " + "\n  ".join(_clip(names)))
    if any("/AuxLogits/" in key for key in unexpected):
      problems.append("(the checkpoint has Inception-v3's auxiliary classifier: build the "
                      "model with aux_logits=True, or skip it with "
                      "dont_load=['backbone/AuxLogits/.*'])")
    raise ValueError(
        f"cannot load {source} into the model:\n" + "\n".join(problems)
        + "\n(use dont_load=[regex, ...] to keep initialised variables or to skip "
        "checkpoint entries)")
  if kept:
    logging.info("Kept %d initialised variables (dont_load): %s", len(kept),
                 ", ".join(_clip(kept)))
  if ignored:
    logging.info("Ignored %d checkpoint entries the model lacks (dont_load): %s",
                 len(ignored), ", ".join(_clip(ignored)))
  if checkpoint.skipped:
    logging.info("Skipped %d checkpoint entries: %s", len(checkpoint.skipped),
                 ", ".join(_clip(checkpoint.skipped)))
  return loaded


# ----------------------------------------------------------------------------
# PyTorch state dicts.
# ----------------------------------------------------------------------------


def _one_line(error: BaseException, limit: int = 200) -> str:
  """An exception as `Type: message` on one short line.

  The command line prints errors on one line, and zipfile's messages can quote
  kilobytes of the file.
  """
  message = " ".join(str(error).split())
  if len(message) > limit:
    message = message[:limit] + "..."
  return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _head(path: str) -> bytes:
  """The first bytes of a file, which tell its format."""
  with open(path, "rb") as f:
    return f.read(16)


def _damaged(path: str, what: str) -> ValueError:
  return ValueError(f"checkpoint {path} is {what}; download or convert it again")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    return safetensors.numpy.load_file(path)
  except (safetensors.SafetensorError, OSError) as e:
    # The header (length, JSON, offsets) is all that safetensors can check;
    # damaged float data is caught by `_checked_finite`.
    raise _damaged(path, f"not a valid safetensors file ({_one_line(e)})") from e
  except TypeError as e:  # e.g. bfloat16, which numpy has no type for
    raise ValueError(f"{path}: numpy cannot read its tensors ({_one_line(e)}); save them "
                     "as float32, or as .pth") from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
  head = _head(path)
  if not head.startswith(b"PK"):
    raise _damaged(path, (f"not a .npz file (a zip archive of .npy arrays); it starts with "
                          f"{head!r}") if head else "empty")
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files}
  except Exception as e:  # pylint: disable=broad-except
    # zipfile and numpy's .npy header parser report damage with many types
    # (BadZipFile, EOFError, ValueError, SyntaxError, zlib.error, ...).
    raise _damaged(path, f"a truncated or corrupt .npz file ({_one_line(e)})") from e


def _read_torch(path: str) -> dict[str, np.ndarray]:
  """Reads a `.pth` state dict, weights only (`torch_pickle`: no PyTorch
  needed, and no global outside a weights file's is ever called)."""
  head = _head(path)
  # torch.save writes a zip archive, or, before PyTorch 1.6, a pickle
  # (protocol 2+, which starts with 0x80).
  if not head.startswith((b"PK", b"\x80")):
    raise _damaged(path, ("not a PyTorch file (neither a zip archive nor a pickle); it "
                          f"starts with {head!r}") if head else "empty")
  try:
    obj = torch_pickle.read_state(path)
  except torch_pickle.RefusedGlobal as e:
    raise ValueError(
        f"refusing to load {path}: it is not a plain weights file, the "
        "weights-only unpickler rejected it (it may contain code). If you "
        f"trust it, re-save its state_dict() as .safetensors. Detail: {_one_line(e)}") from e
  except Exception as e:  # pylint: disable=broad-except
    # Damage shows as zipfile.BadZipFile (a wrong CRC, a cut archive),
    # pickle.UnpicklingError, EOFError, ValueError, struct.error, ...
    raise _damaged(path, f"a truncated or corrupt torch file ({_one_line(e)})") from e
  # Training checkpoints wrap the state dict.
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  state = {}
  for key, tensor in obj.items():
    if not isinstance(tensor, np.ndarray):
      raise ValueError(f"{path}: entry {key!r} is a {type(tensor).__name__}, "
                       "not a tensor")
    state[key] = tensor
  # DistributedDataParallel prefixes every key with `module.`.
  if state and all(key.startswith("module.") for key in state):
    state = {key[len("module."):]: value for key, value in state.items()}
  return state


def _checked_finite(path: str, arrays: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
  """`arrays`, if every float value is finite.

  Pretrained weights are finite. NaN or infinity means damage the format could
  not detect (safetensors has no checksums, so overwritten float bytes load
  without complaint; a `.pth` archive's checksums catch them) or weights
  saved from a diverged run; either way, training from them only gives NaN.
  """
  bad = [key for key, value in arrays.items()
         if np.issubdtype(np.asarray(value).dtype, np.floating)
         and not np.isfinite(value).all()]
  if bad:
    listed = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
    raise _damaged(path, f"corrupt: {len(bad)} of its {len(arrays)} tensors hold NaN or "
                         f"infinite values ({listed})")
  return arrays


def convert_torch_state_dict(state: Mapping[str, np.ndarray], backbone: str) -> Checkpoint:
  """Translates a torchvision / timm state dict for `backbone` (see module doc)."""
  family = _family(backbone)
  if family == "vit":
    return _convert_timm_vit(state, _vit_num_heads(backbone))
  rename = {"resnet": _torchvision_resnet_module, "vgg": _torchvision_vgg_module,
            "inception": _torchvision_inception_module}[family]
  checkpoint = Checkpoint({})
  for key, value in state.items():
    module, _, name = key.rpartition(".")
    if name == "num_batches_tracked":
      checkpoint.skipped.append(key)
      continue
    target_module = rename(module)
    if target_module is None:
      checkpoint.unknown.append(key)
      continue
    if family == "vgg" and target_module == "backbone/fc6" and name == "weight":
      value = _vgg_fc6_rows_to_nhwc(value)
    placed = _place_torch_tensor(target_module, name, np.asarray(value))
    if placed is None:
      checkpoint.unknown.append(key)
    else:
      checkpoint.arrays[placed[0]] = placed[1]
  return checkpoint


def _place_torch_tensor(module: str, name: str,
                        value: np.ndarray) -> tuple[str, np.ndarray] | None:
  """(tljax path, array) of a torch parameter or buffer, by name and rank."""
  if name == "running_mean":
    return f"batch_stats/{module}/mean", value
  if name == "running_var":
    return f"batch_stats/{module}/var", value
  if name == "bias":
    return f"params/{module}/bias", value
  if name == "weight":
    if value.ndim == 4:  # convolution, OIHW -> HWIO
      return f"params/{module}/kernel", value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # linear, (out, in) -> (in, out)
      return f"params/{module}/kernel", value.T
    if value.ndim == 1:  # BatchNorm / LayerNorm
      return f"params/{module}/scale", value
  return None


def _torchvision_resnet_module(module: str) -> str | None:
  """`layer1.0.downsample.1` -> `backbone/layer1_0/downsample_bn`; `fc` -> head."""
  if module == "fc":
    return "head"
  parts = module.split(".")
  if parts[0] in ("conv1", "bn1") and len(parts) == 1:
    return f"backbone/{module}"
  if re.fullmatch(r"layer[1-4]", parts[0]) and len(parts) >= 3:
    block = f"{parts[0]}_{parts[1]}"
    rest = parts[2:]
    if rest[0] == "downsample":
      if rest[1:] not in (["0"], ["1"]):
        return None
      rest = ["downsample_conv" if rest[1] == "0" else "downsample_bn"]
    return "/".join(["backbone", block, *rest])
  return None


def is_plain_resnet(checkpoint: Checkpoint) -> bool:
  """Whether a translated ResNet checkpoint lacks IBN-Net's parts (torchvision's does)."""
  return not any(re.search(r"/(IN|BN)/", key) for key in checkpoint.arrays)


def resnet_into_ibn(checkpoint: Checkpoint, target: Mapping[str, Any]
                    ) -> tuple[Checkpoint, tuple[str, ...]]:
  """A torchvision ResNet checkpoint laid out for an IBN-Net model (`target`:
  flat paths with collection): each IBN-a block's `bn1` (C channels) fills the
  BatchNorm part `bn1/BN`, which normalises the last `C - int(C / 2)`
  channels, with those channels. The InstanceNorm parts have no counterpart
  and keep their initialisation: IBN-a's `bn1/IN`, IBN-b's blocks' `IN`, and
  IBN-b's stem `bn1` (an InstanceNorm, so torchvision's stem BatchNorm is
  dropped).

  Returns:
    `(checkpoint, dont_load regexes of the variables kept fresh)`.
  """
  arrays = dict(checkpoint.arrays)
  fresh = set()
  for key, want in target.items():
    inner = _inner(key)
    if "/BN/" in inner:
      whole = key.replace("/BN/", "/", 1)
      if whole in arrays:
        arrays[key] = arrays.pop(whole)[-want.shape[0]:]
    elif re.search(r"(^|/)IN/(scale|bias)$", inner):
      fresh.add(re.escape(inner))
  if "batch_stats/backbone/bn1/mean" not in target and "params/backbone/bn1/scale" in target:
    # IBN-b: the stem normalises per example.
    fresh.update(re.escape(f"backbone/bn1/{leaf}") for leaf in ("scale", "bias"))
    for leaf in ("params/backbone/bn1/scale", "params/backbone/bn1/bias",
                 "batch_stats/backbone/bn1/mean", "batch_stats/backbone/bn1/var"):
      arrays.pop(leaf, None)
  return dataclasses.replace(checkpoint, arrays=arrays), tuple(sorted(fresh))


_VGG_FEATURES = vgg_lib.torchvision_feature_names()
_VGG_CLASSIFIER = {"classifier.0": "backbone/fc6", "classifier.3": "backbone/fc7",
                   "classifier.6": "head"}


def _torchvision_vgg_module(module: str) -> str | None:
  if module in _VGG_CLASSIFIER:
    return _VGG_CLASSIFIER[module]
  parts = module.split(".")
  if (len(parts) == 2 and parts[0] == "features" and parts[1].isdigit()
      and int(parts[1]) in _VGG_FEATURES):
    return f"backbone/{_VGG_FEATURES[int(parts[1])]}"
  return None


def _torchvision_inception_module(module: str) -> str | None:
  """`Mixed_5b.branch1x1.conv` -> `backbone/Mixed_5b/branch1x1/conv`; `fc` -> head."""
  if module == "fc":
    return "head"
  if module.split(".")[0] in inception_lib.TORCHVISION_MODULES:
    return "backbone/" + module.replace(".", "/")
  return None


def _vgg_fc6_rows_to_nhwc(weight: np.ndarray) -> np.ndarray:
  """fc6 weight `(out, C*7*7)` over NCHW-flattened input -> over NHWC order."""
  size = vgg_lib.POOLED_SIZE
  out_features, in_features = weight.shape
  channels = in_features // (size * size)
  weight = weight.reshape(out_features, channels, size, size)
  return weight.transpose(0, 2, 3, 1).reshape(out_features, in_features)


def _vit_num_heads(backbone: str) -> int:
  return models.get_backbone(backbone).num_heads


_TIMM_BLOCK_MODULES = {
    "norm1": "LayerNorm_0",
    "norm2": "LayerNorm_1",
    "attn.proj": "MultiHeadDotProductAttention_0/out",
    "mlp.fc1": "MlpBlock_0/Dense_0",
    "mlp.fc2": "MlpBlock_0/Dense_1",
}


def _convert_timm_vit(state: Mapping[str, np.ndarray], num_heads: int) -> Checkpoint:
  """Translates a timm `VisionTransformer` state dict (class-token pooling)."""
  checkpoint = Checkpoint({})
  arrays = checkpoint.arrays
  state = dict(state)
  if "cls_token" in state and "pos_embed" in state:
    cls, posemb = _fold_class_posemb(np.asarray(state.pop("cls_token")),
                                     np.asarray(state.pop("pos_embed")))
    arrays["params/backbone/cls"] = cls
    arrays["params/backbone/pos_embedding"] = posemb
  for key, value in state.items():
    value = np.asarray(value)
    module, _, name = key.rpartition(".")
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if module == "patch_embed.proj":
      target = "backbone/embedding"
    elif module == "norm":
      target = "backbone/Transformer/encoder_norm"
    elif module == "head":
      target = "head"
    elif block and block.group(2) == "attn.qkv":
      prefix = f"params/backbone/Transformer/encoderblock_{block.group(1)}"
      for part, projection in zip(("query", "key", "value"), np.split(value, 3)):
        width = projection.shape[0]
        if name == "weight":  # (out, in) -> (in, heads, head_dim)
          part_value = projection.T.reshape(-1, num_heads, width // num_heads)
          arrays[f"{prefix}/MultiHeadDotProductAttention_0/{part}/kernel"] = part_value
        else:
          arrays[f"{prefix}/MultiHeadDotProductAttention_0/{part}/bias"] = (
              projection.reshape(num_heads, width // num_heads))
      continue
    elif block and block.group(2) in _TIMM_BLOCK_MODULES:
      target = (f"backbone/Transformer/encoderblock_{block.group(1)}/"
                f"{_TIMM_BLOCK_MODULES[block.group(2)]}")
    else:
      checkpoint.unknown.append(key)
      continue
    if target.endswith("/out") and name == "weight":  # (out, in) -> (heads, hd, out)
      arrays[f"params/{target}/kernel"] = value.T.reshape(num_heads, -1, value.shape[0])
      continue
    placed = _place_torch_tensor(target, name, value)
    if placed is None:
      checkpoint.unknown.append(key)
    else:
      arrays[placed[0]] = placed[1]
  return checkpoint


def _fold_class_posemb(cls: np.ndarray, posemb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Moves a class-token position embedding (timm, AugReg) into the token.

  `posemb` is `(1, 1 + h*w, D)` with the class slot first, or `(1, h*w, D)`
  without one, in which case it is returned as is.
  """
  num_tokens = posemb.shape[1]
  side = int(round(np.sqrt(num_tokens - 1)))
  if side * side + 1 == num_tokens:
    return cls + posemb[:, :1], posemb[:, 1:]
  return cls, posemb


# ----------------------------------------------------------------------------
# big_vision / AugReg .npz ViTs.
# ----------------------------------------------------------------------------

# Names in the AugReg checkpoints (vision_transformer repo, pre-2022) whose
# numbering came from flax's old auto-naming.
_AUGREG_RENAMES = (("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0"),
                   ("MlpBlock_3", "MlpBlock_0"),
                   ("LayerNorm_2", "LayerNorm_1"))


def convert_big_vision_vit(arrays: Mapping[str, np.ndarray]) -> Checkpoint:
  """Translates big_vision / AugReg ViT `.npz` names (class-token models).

  The names are already tljax's (see `tljax.models.vit`), up to the fixes that
  big_vision's own `fix_old_checkpoints` applies: a `opt/target/` or `params/`
  prefix, the position embedding under `Transformer/posembed_input` or
  `Transformer`, a class-token slot in it, AugReg's module numbering, and
  scanned `Transformer/encoderblock` stacks (leading depth axis).
  """
  arrays = dict(arrays)
  for prefix in ("opt/target/", "params/"):
    if arrays and all(key.startswith(prefix) for key in arrays):
      arrays = {key[len(prefix):]: value for key, value in arrays.items()}
  for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
    if old in arrays:
      arrays["pos_embedding"] = arrays.pop(old)
  if "cls" in arrays and "pos_embedding" in arrays:
    arrays["cls"], arrays["pos_embedding"] = _fold_class_posemb(
        arrays["cls"], arrays["pos_embedding"])
  if any(key.startswith("Transformer/encoderblock/") for key in arrays):
    for key in [key for key in arrays if key.startswith("Transformer/encoderblock/")]:
      stacked = arrays.pop(key)
      rest = key[len("Transformer/encoderblock/"):]
      for index, value in enumerate(stacked):
        arrays[f"Transformer/encoderblock_{index}/{rest}"] = value
  if any("/MlpBlock_3/" in key for key in arrays):
    renamed = {}
    for key, value in arrays.items():
      for old, new in _AUGREG_RENAMES:
        key = key.replace(f"/{old}/", f"/{new}/")
      renamed[key] = value
    arrays = renamed

  checkpoint = Checkpoint({})
  for key, value in arrays.items():
    if key.startswith("head/"):
      checkpoint.arrays[f"params/{key}"] = value
    elif key.split("/")[0] in ("embedding", "cls", "pos_embedding", "Transformer"):
      checkpoint.arrays[f"params/backbone/{key}"] = value
    else:  # e.g. pre_logits (a tanh representation layer we do not build)
      checkpoint.unknown.append(key)
  return checkpoint


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _family(backbone: str) -> str:
  for prefix, family in (("resnet", "resnet"), ("vgg", "vgg"), ("vit_", "vit"),
                         ("inception", "inception")):
    if backbone.startswith(prefix):
      return family
  raise ValueError(f"no checkpoint translation for backbone {backbone!r}; "
                   "known families: resnet*, vgg*, vit_*, inception*")


def _inner(key: str) -> str:
  """The path without its collection: `params/backbone/x` -> `backbone/x`."""
  return key.split("/", 1)[1]


def _resample_posemb(key: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if len(shape) != 3 or value.ndim != 3 or value.shape[2] != shape[2]:
    return value  # reported as a shape mismatch
  side = int(round(np.sqrt(shape[1])))
  if side * side != shape[1]:
    return value
  logging.info("Resampling %s from %s to %s", key, value.shape, shape)
  return vit_lib.resample_posemb(value, (side, side))


def _clip(names: list[str]) -> list[str]:
  if len(names) <= _MAX_LISTED:
    return names
  return names[:_MAX_LISTED] + [f"... and {len(names) - _MAX_LISTED} more"]
