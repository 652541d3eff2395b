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
  head = params["head"]
  return int((head["linear"] if "linear" in head else head)["bias"].shape[-1])


def from_workdir(workdir: str, layer: str = "features") -> Extractor:
  """The classifier a finished (or checkpointed) tljax run trained."""
  config = workdir_lib.read_config(workdir)
  state, step = workdir_lib.latest_state(workdir)
  params = {k: v for k, v in state["params"].items() if k in ("backbone", "bottleneck", "head")}
  batch_stats = {k: v for k, v in state["model_state"].get("batch_stats", {}).items()
                 if k in ("backbone", "bottleneck", "head")}
  classifier = models.create_classifier(config.model, _num_classes(params))
  variables = {"params": params, "batch_stats": batch_stats}
  return Extractor(classifier, variables, _check_layer(layer), config.data.eval_preprocess.to_dict(),
                   key=f"workdir:{os.path.abspath(workdir)}:step{step}")


def from_pretrained(model_config: ml_collections.ConfigDict, image_size: int,
                    eval_preprocess: dict[str, Any]) -> Extractor:
  """A backbone with weights from `model_config.init`, read at its pooled output."""
  from tljax.models import checkpoints  # pylint: disable=g-import-not-at-top

  if not model_config.get("init"):
    raise ValueError("config.features.init must name the pretrained checkpoint "
                     "(.safetensors, .pth, .npz) of config.features.model")
  probe_config = ml_collections.ConfigDict({"name": model_config.name, "bottleneck_dim": 0,
                                            "backbone_kwargs": model_config.get("backbone_kwargs", {})})
  classifier = models.create_classifier(probe_config, num_classes=1)
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0), images))
  initial = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  variables = checkpoints.load(initial, model_config.init, backbone=model_config.name,
                               dont_load=("head/.*",))
  stat = os.stat(model_config.init)
  return Extractor(classifier, variables, "backbone", dict(eval_preprocess),
                   key=f"init:{os.path.abspath(model_config.init)}:{stat.st_size}:{stat.st_mtime_ns}")


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


def cached(extractor: Extractor, domain: Domain, cache_dir: str, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """`extract`, read from `cache_dir` when this exact extraction was done before."""
  spec = json.dumps([extractor.key, extractor.layer, extractor.eval_preprocess, domain.name,
                     domain.split, len(domain)], sort_keys=True)
  digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"{domain.name.replace('/', '_')}_{domain.split}_{digest}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return f["features"], f["labels"]
  logging.info("Extracting %s features of %s:%s (%d examples) into %s.", extractor.layer,
               domain.name, domain.split, len(domain), path)
  features, labels = extract(extractor, domain, **kwargs)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"  # processes may share the cache directory
  np.savez(tmp, features=features, labels=labels, spec=spec)
  os.replace(tmp, path)
  return features, labels


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
  """`domain` with each image replaced by its cached feature vector."""
  features, labels = cached(extractor, domain, cache_dir, **kwargs)
  return dataclasses.replace(domain, source=_ArraySource(features, labels))


def create_extractor(features_config: ml_collections.ConfigDict, image_size: int,
                     eval_preprocess: dict[str, Any]) -> Extractor:
  """From `config.features`: a tljax `workdir`, or a pretrained `model` + `init`."""
  if features_config.get("workdir"):
    return from_workdir(features_config.workdir, features_config.get("layer", "features"))
  if features_config.get("model"):
    return from_pretrained(ml_collections.ConfigDict({"name": features_config.model,
                                                      "init": features_config.get("init", "")}),
                           image_size, eval_preprocess)
  raise ValueError("config.features needs either `workdir` (a trained tljax run, e.g. "
                   "source_only on digits) or `model` and `init` (a pretrained checkpoint)")
