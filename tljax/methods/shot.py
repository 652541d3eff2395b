"""SHOT (Liang et al., "Do We Really Need to Access the Source Data? Source
Hypothesis Transfer for Unsupervised Domain Adaptation", ICML 2020).

Source-free: the step reads only target data (`inputs = ('target',)`; the
trainer never builds a source stream). The run starts from a model trained on
the source (`config.model.init` = a source_only workdir, see
`configs/shot.py`), keeps its head (the source hypothesis) frozen through
`config.param_groups`, and trains the encoder (backbone + bottleneck) on

    information_maximization(target logits) + beta * CE(target logits, pseudo-labels)

`information_maximization` (`tljax.losses`) is the mean prediction entropy
minus the entropy of the mean prediction (confident, diverse predictions).
The pseudo-labels come from self-supervised clustering over the whole target
training split (`cluster_pseudo_labels`), recomputed with the encoder in
inference mode before the first step of every pass over the target split
(`refresh_interval`), stored in `TrainState.method_state['pseudo_labels']`
(checkpointed) and looked up by each example's `index`.

Deviations from the paper and its code: the head is tljax's linear head, not
a weight-normalised one (frozen, both are a fixed linear map); the bottleneck
is `Linear -> BN -> ReLU` (the authors' has no ReLU) and the source model is
any source_only run (the authors train theirs with label smoothing 0.1, which
tljax's source_only does not have). The learning rate of step `i` is
`lr (1 + gamma i)^-power`, as TLlib's schedules; the authors' `lr_scheduler`
uses `i + 1`. The clustering is the object-recognition code's
(`object/image_target.py`: classes predicted at most `threshold` times get no
centroid); their digit script keeps every centroid. `tests/test_trajectory.py`
holds the step, the refreshes and the clustering to `image_target.py`.
"""

from __future__ import annotations

import dataclasses

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from tljax import losses
from tljax.methods import base, register


def cluster_pseudo_labels(features: np.ndarray, logits: np.ndarray, *, rounds: int,
                          min_count: int) -> np.ndarray:
  """SHOT's pseudo-labels: weighted k-means over cosine distance (the paper's Eq. 4-6).

      z_i = [f_i, 1] / ||[f_i, 1]||            (features with a 1 appended, unit norm)
      round 1: c_k = sum_i p_ik z_i / (sum_i p_ik + 1e-8)   (p = softmax(logits))
      round r > 1: c_k = mean of the z_i labelled k in round r - 1
      y_i = argmin_{k in K} (1 - cos(z_i, c_k))

  where `K` is the classes labelled (arg-max of `p` before round 1) more than
  `min_count` times in the previous round (the authors' `threshold`, 0).
  The authors' `obtain_label` with `distance='cosine'`, two rounds.

  Args:
    features: `(n, d)` bottleneck features of every target example.
    logits: `(n, C)` their logits.
    rounds: centroid/assignment rounds (2 in the paper).
    min_count: a class needs more examples than this to keep its centroid.

  Returns:
    `(n,)` integer labels.
  """
  features = np.asarray(features, np.float64)
  logits = np.asarray(logits, np.float64)
  num_classes = logits.shape[1]
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  z = np.concatenate([features, np.ones((len(features), 1))], axis=1)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  labels = probs.argmax(axis=1)
  weights = probs
  for _ in range(rounds):
    centroids = weights.T @ z / (1e-8 + weights.sum(axis=0)[:, None])
    kept = np.flatnonzero(np.bincount(labels, minlength=num_classes) > min_count)
    kept_centroids = centroids[kept]
    norms = np.linalg.norm(kept_centroids, axis=1)
    cosine = (z @ kept_centroids.T) / np.where(norms > 0, norms, 1.0)
    labels = kept[np.argmax(cosine, axis=1)]  # min cosine distance = max cosine
    weights = np.eye(num_classes)[labels]
  return labels


@register("shot")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SHOT(base.Method):
  """Source-free hypothesis transfer.

  Attributes:
    beta: weight of the pseudo-label cross-entropy (the paper's beta, 0.3).
    trade_off_im: weight of the information maximisation loss (1).
    epsilon: offset inside the logs of the entropies (1e-5).
    clustering_rounds: rounds of the pseudo-label clustering (2).
    min_class_count: classes predicted at most this many times get no
      centroid (0).
  """

  inputs = ("target",)

  beta: float
  trade_off_im: float
  epsilon: float
  clustering_rounds: int
  min_class_count: int

  def trained_start_reason(self):
    return "source-free: it adapts a model trained on the source, and never reads source labels"

  def init_method_state(self, ctx, variables):
    return {"pseudo_labels": jnp.zeros((ctx.num_target_examples,), jnp.int32)}

  def refresh_interval(self, steps_per_target_epoch):
    return steps_per_target_epoch

  def refresh(self, ctx, state, predict):
    features, logits = predict(base.owned(state.variables, base.CLASSIFIER))
    labels = cluster_pseudo_labels(features, logits, rounds=self.clustering_rounds,
                                   min_count=self.min_class_count)
    changed = np.mean(labels != np.argmax(logits, axis=1))
    logging.info("SHOT pseudo-labels at step %d: %d classes, %.1f%% differ from the "
                 "predictions.", int(state.step), len(np.unique(labels)), 100 * changed)
    labels = labels.astype(np.int32)
    old = state.method_state["pseudo_labels"]
    # Every process computed the same labels; each places its own shards.
    new = jax.make_array_from_callback(labels.shape, old.sharding, lambda index: labels[index])
    return state.replace(method_state={**state.method_state, "pseudo_labels": new})

  def loss(self, ctx, variables, batch, step, rng):
    """The target loss; `batch['pseudo_labels']` holds the batch's labels."""
    target = batch["target"]
    pseudo_labels = batch["pseudo_labels"]
    (_, logits), variables = ctx.apply_classifier(variables, target["image"], train=True, rng=rng)
    im_loss = losses.information_maximization(logits, epsilon=self.epsilon)
    cls_loss = base.cross_entropy(logits, pseudo_labels)
    return self.trade_off_im * im_loss + self.beta * cls_loss, (variables, {
        "im_loss": im_loss, "cls_loss": cls_loss,
        "pseudo_label_agreement": base.accuracy(logits, pseudo_labels)})

  def train_step(self, ctx, state, batch, rng):
    labels = state.method_state["pseudo_labels"][batch["target"]["index"]]
    batch = {**batch, "pseudo_labels": labels}
    return ctx.update(state, "main", lambda v: self.loss(ctx, v, batch, state.step, rng))
