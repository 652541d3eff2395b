"""MCD (Saito et al., "Maximum Classifier Discrepancy for Unsupervised Domain
Adaptation", CVPR 2018), as TLlib's `mcd.py`.

A generator G (the classifier's backbone, and its bottleneck if configured)
feeds two heads of the same architecture: F1, the classifier's own head
(`config.model.head_type = 'mcd'`, TLlib's `ImageClassifierHead`), and F2,
the method's network `method/f2`. Each step takes three phases on one pass
over `[source; target]` each, with two optimizers (`generator` over G,
`classifiers` over F1 and F2):

A. G, F1, F2 minimise both heads' source cross-entropy plus
   `trade_off_entropy` x MCD's entropy term on the target predictions;
B. F1, F2 minimise the same minus `trade_off` x the discrepancy between the
   two heads' target predictions (G fixed);
C. `num_k` times, G minimises `trade_off` x the discrepancy (heads fixed).

Every pass is in training mode, so BatchNorm statistics move in all phases
(as in TLlib). Evaluation uses G + F1 (TLlib reports the better of F1 and
F2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register
from tljax.models.heads import MCDHead

GENERATOR = "generator"
CLASSIFIERS = "classifiers"


@register("mcd")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MCD(base.Method):
  """Maximum classifier discrepancy with two heads.

  Attributes:
    trade_off: weight of the discrepancy in phases B and C.
    trade_off_entropy: weight of MCD's entropy term in phases A and B.
    num_k: generator updates per step (phase C).
  """

  trade_off: float
  trade_off_entropy: float
  num_k: int

  def networks(self, num_classes, classifier):
    if classifier.head_type != "mcd":
      raise ValueError("MCD's two heads are TLlib's ImageClassifierHead: set "
                       f"config.model.head_type='mcd' (got {classifier.head_type!r})")
    return {"f2": MCDHead(num_classes, classifier.head_hidden, classifier.head_dropout,
                          dtype=classifier.dtype)}

  def init_networks(self, ctx, rng, variables, outputs):
    params_rng, dropout_rng = jax.random.split(rng)
    return {"f2": dict(ctx.networks["f2"].init({"params": params_rng, "dropout": dropout_rng},
                                               outputs.source_features, train=False))}

  def optimizers(self):
    return {GENERATOR: base.OptimizerSpec("classifier/(backbone|bottleneck)/.*"),
            CLASSIFIERS: base.OptimizerSpec("classifier/head/.*|method/f2/.*")}

  # ------------------------------------------------------------- the phases

  def _forward(self, ctx, variables, batch, rng):
    """Both heads on one pass of G over `[source; target]`: `(logits1, logits2)`."""
    source, target = batch["source"], batch["target"]
    images = jnp.concatenate([source["image"], target["image"]])
    g_rng, f2_rng = jax.random.split(rng)
    (features, logits1), variables = ctx.apply_classifier(variables, images, train=True,
                                                          rng=g_rng)
    logits2, variables = ctx.apply_network("f2", variables, features, train=True, rng=f2_rng)
    return logits1, logits2, variables

  def _source_loss(self, ctx, variables, batch, rng):
    """Both heads' source cross-entropy + entropy term, and the target probabilities."""
    logits1, logits2, variables = self._forward(ctx, variables, batch, rng)
    n = batch["source"]["label"].shape[0]
    labels = batch["source"]["label"]
    probs1, probs2 = jax.nn.softmax(logits1[n:]), jax.nn.softmax(logits2[n:])
    cls_loss = base.cross_entropy(logits1[:n], labels) + base.cross_entropy(logits2[:n], labels)
    entropy = losses.mcd_entropy(probs1) + losses.mcd_entropy(probs2)
    metrics = {"cls_loss": cls_loss, "entropy_loss": entropy,
               "source_train_accuracy": base.accuracy(logits1[:n], labels)}
    return cls_loss + self.trade_off_entropy * entropy, probs1, probs2, variables, metrics

  def step_a(self, ctx, state, batch, rng):
    """A: G, F1 and F2 learn the source task."""

    def loss_fn(variables):
      loss, _, _, variables, metrics = self._source_loss(ctx, variables, batch, rng)
      return loss, (variables, metrics)

    return ctx.update(state, (GENERATOR, CLASSIFIERS), loss_fn)

  def step_b(self, ctx, state, batch, rng):
    """B: F1 and F2 keep the source task and pull apart on the target."""

    def loss_fn(variables):
      loss, probs1, probs2, variables, metrics = self._source_loss(ctx, variables, batch, rng)
      discrepancy = losses.classifier_discrepancy(probs1, probs2)
      return loss - self.trade_off * discrepancy, (variables, {"discrepancy": discrepancy})

    return ctx.update(state, CLASSIFIERS, loss_fn)

  def step_c(self, ctx, state, batch, rng):
    """C: `num_k` updates of G towards heads that agree on the target."""

    def loss_fn(variables, key):
      logits1, logits2, variables = self._forward(ctx, variables, batch, key)
      n = batch["source"]["label"].shape[0]
      discrepancy = losses.classifier_discrepancy(jax.nn.softmax(logits1[n:]),
                                                  jax.nn.softmax(logits2[n:]))
      return self.trade_off * discrepancy, (variables, {"discrepancy": discrepancy})

    # Unrolled (num_k is small and static): XLA:CPU runs a step inside a
    # `lax.scan` loop body an order of magnitude slower than the same ops unrolled.
    metrics = {}
    for key in jax.random.split(rng, self.num_k):
      state, metrics = ctx.update(state, GENERATOR, lambda v, key=key: loss_fn(v, key))
    return state, metrics

  def train_step(self, ctx, state, batch, rng):
    a_rng, b_rng, c_rng = jax.random.split(rng, 3)
    state, a = self.step_a(ctx, state, batch, a_rng)
    state, b = self.step_b(ctx, state, batch, b_rng)
    state, c = self.step_c(ctx, state, batch, c_rng)
    return state, {"cls_loss": a["cls_loss"], "entropy_loss": a["entropy_loss"],
                   "source_train_accuracy": a["source_train_accuracy"],
                   "loss": a["loss"], "classifier_discrepancy": b["discrepancy"],
                   "transfer_loss": c["discrepancy"],
                   "grad_norm": a["grad_norm"], "classifiers_grad_norm": b["grad_norm"],
                   "generator_grad_norm": c["grad_norm"]}
