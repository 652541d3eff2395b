"""Feature extraction: a frozen network run once over a split, cached on disk.

The second transfer recipe after fine-tuning: extract pooled features with a
frozen backbone, cache them, and train only a linear or MLP head on the cache
(`configs/linear_probe.py`). The same features feed the shallow methods and the
analysis tools (`tljax.shallow`, `tljax.analyze`).

An extractor comes either from a pretrained checkpoint (`model` + `init`, e.g.
an ImageNet ResNet-50) or from a finished tljax run (`workdir`: its config and
latest checkpoint). Features are cached as `.npz` under a key that covers the
network, its weights file, the layer, the dataset split and the preprocessing,
so a changed input is never served stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tljax import models
from tljax import workdir as workdir_lib
from tljax.data import pipeline, preprocess
from tljax.data.registry import Domain
from tljax.models import checkpoints

LAYERS = ("backbone", "features", "logits")


@dataclasses.dataclass(frozen=True)
class Extractor:
  """A frozen classifier and the layer to read.

  Attributes:
    classifier: the network.
    variables: its `{'params', 'batch_stats'}` (evaluation mode).
    layer: 'backbone' (pooled backbone output), 'features' (bottleneck output)
      or 'logits'.
    eval_preprocess: preprocessing config (`{'name': ..., **kwargs}`).
    key: identifies network + weights, for the cache.
  """

  classifier: Any
  variables: Any
  layer: str
  eval_preprocess: dict[str, Any]
  key: str


def _num_classes(params: dict[str, Any]) -> int:
  """Classes of a classifier's head: the width of its last layer's bias."""
  head = params["head"]
  last = head if "bias" in head else head[sorted(head)[-1]]
  for name in ("linear", "output"):
    if name in head:
      last = head[name]
  return int(last["bias"].shape[-1])


def from_workdir(workdir: str, layer: str = "features") -> Extractor:
  """The classifier a finished (or checkpointed) tljax run trained (its latest
  checkpoint, or `<workdir>/checkpoints/<step>`)."""
  variables, described = workdir_lib.classifier_variables(workdir)
  run_dir = described.rsplit("@", 1)[0]
  config = workdir_lib.read_config(run_dir)
  classifier = models.create_classifier(config.model, _num_classes(variables["params"]))
  return Extractor(classifier, variables, _check_layer(layer), config.data.eval_preprocess.to_dict(),
                   key=f"workdir:{described}")


def from_pretrained(features_config: ml_collections.ConfigDict) -> Extractor:
  """A backbone with weights from `features_config.init`, read at its pooled output.

  `features_config`: `model` (backbone name), `init` (checkpoint file),
  `backbone_kwargs` (e.g. a ViT's `image_size`), `image_size` and
  `eval_preprocess` (how images are prepared for it).
  """
  if not features_config.init:
    raise ValueError("config.features.init must name the pretrained checkpoint "
                     "(.safetensors, .pth, .npz) of config.features.model")
  backbone_kwargs = dict(features_config.backbone_kwargs)
  # Only the backbone is read: a classifier without a bottleneck around it, so
  # that the checkpoint's backbone names fit.
  classifier = models.Classifier(backbone=models.get_backbone(features_config.model,
                                                              **backbone_kwargs),
                                 num_classes=1, bottleneck_dim=0)
  size = features_config.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0), images))
  initial = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  variables = checkpoints.load(initial, features_config.init, backbone=features_config.model,
                               dont_load=("head/.*",))
  stat = os.stat(features_config.init)
  return Extractor(classifier, variables, "backbone", dict(features_config.eval_preprocess),
                   key=(f"init:{os.path.abspath(features_config.init)}:{stat.st_size}:"
                        f"{stat.st_mtime_ns}:{sorted(backbone_kwargs.items())}"))


def _check_layer(layer: str) -> str:
  if layer not in LAYERS:
    raise ValueError(f"features layer must be one of {LAYERS}, got {layer!r}")
  return layer


def extract(extractor: Extractor, domain: Domain, *, batch_size: int = 256,
            num_threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every example of `domain`, in order."""
  classifier, layer = extractor.classifier, extractor.layer

  @jax.jit
  def forward(variables, images):
    if layer == "backbone":
      return classifier.apply(variables, images, method=lambda m, x: m.backbone(x, train=False))
    features, logits = classifier.apply(variables, images, train=False)
    return features if layer == "features" else logits

  fn = preprocess.get_preprocess(**extractor.eval_preprocess)
  outputs, labels = [], []
  for batch in pipeline.eval_batches(domain, global_batch_size=batch_size, preprocess=fn,
                                     num_threads=num_threads):
    keep = batch["mask"] > 0
    outputs.append(np.asarray(forward(extractor.variables, batch["image"]))[keep])
    labels.append(batch["label"][keep])
  return np.concatenate(outputs).astype(np.float32), np.concatenate(labels).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class CacheEntry:
  """One extraction, to be written into the cache (`save`)."""

  path: str
  spec: str
  features: np.ndarray
  labels: np.ndarray


def cached(extractor: Extractor, domain: Domain, cache_dir: str, *,
           unsaved: list[CacheEntry] | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """`extract`, read from `cache_dir` when this exact extraction was done before.

  A new extraction is written there at once, or, given `unsaved`, appended to
  it for `save` to write later (the trainer writes nothing into a workdir
  before it holds the workdir's lock)."""
  spec = json.dumps([extractor.key, extractor.layer, extractor.eval_preprocess, domain.name,
                     domain.split, len(domain)], sort_keys=True)
  digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"{domain.name.replace('/', '_')}_{domain.split}_{digest}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return f["features"], f["labels"]
  logging.info("Extracting %s features of %s:%s (%d examples) for %s.", extractor.layer,
               domain.name, domain.split, len(domain), path)
  features, labels = extract(extractor, domain, **kwargs)
  entry = CacheEntry(path, spec, features, labels)
  if unsaved is None:
    save([entry])
  else:
    unsaved.append(entry)
  return features, labels


def save(entries: list[CacheEntry]) -> None:
  """Writes extractions into their cache files."""
  for entry in entries:
    os.makedirs(os.path.dirname(entry.path), exist_ok=True)
    tmp = f"{entry.path}.{os.getpid()}.tmp.npz"  # processes may share the cache directory
    np.savez(tmp, features=entry.features, labels=entry.labels, spec=entry.spec)
    os.replace(tmp, entry.path)


class _ArraySource:
  """Random access over cached feature vectors, as `{'image': (D,), 'label'}`."""

  def __init__(self, features: np.ndarray, labels: np.ndarray):
    self._features, self._labels = features, labels

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self._features[index], "label": self._labels[index]}

  def get_batch(self, indices: np.ndarray) -> list[dict[str, Any]]:
    return [{"image": f, "label": l} for f, l in zip(self._features[indices], self._labels[indices])]


def feature_domain(extractor: Extractor, domain: Domain, cache_dir: str, **kwargs) -> Domain:
  """`domain` with each image replaced by its cached feature vector (`kwargs`:
  those of `cached`)."""
  features, labels = cached(extractor, domain, cache_dir, **kwargs)
  return dataclasses.replace(domain, source=_ArraySource(features, labels))


def create_extractor(features_config: ml_collections.ConfigDict) -> Extractor:
  """From `config.features`: a tljax `workdir`, or a pretrained `model` + `init`."""
  if features_config.workdir:
    return from_workdir(features_config.workdir, features_config.layer)
  if features_config.model:
    return from_pretrained(features_config)
  raise ValueError("config.features needs either `workdir` (a trained tljax run, e.g. "
                   "source_only on digits) or `model` and `init` (a pretrained checkpoint)")
