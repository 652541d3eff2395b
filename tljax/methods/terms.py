"""Adaptation terms and the method that sums them: most of TLlib's methods.

DAN, JAN, DANN, CDAN, MDD, BSP, MCC, AFN, ... share one step: the classifier
runs once over `[source; target]` (or once per domain), the source
cross-entropy is computed, and each *term* adds `trade_off * value` computed
from the two domains' features and logits. A term is a linen module
(`Term`) registered with `@register_term(name)`: it may own networks (a
domain discriminator, an adversarial head), whose variables live under
`method/<term name>/...`. Registering a term also registers a method of the
same name, and names joined by `+` compose terms in one config:

    config.method = {"name": "cdan+mcc", "forward": "joint",
                     "cdan": {"trade_off": 1.0, "entropy": True},
                     "mcc": {"trade_off": 1.0, "temperature": 2.5}}

Each term has its own `trade_off` and `trade_off_warmup`. The progressive
weight (JAN's schedule over `trade_off_warmup` steps) scales what the term
sends back into the classifier: the gradient of the features and logits it
reads. A term's own networks train at full weight: for adversarial terms the
warm-up ramps only what reaches the features (as the reversal coefficient
does), never the discriminator's own loss; for terms without networks this
is the same as weighting the whole term.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax import losses
from tljax import registry
from tljax.methods import base
from tljax.methods.base import DomainOutputs

FORWARDS = ("joint", "per_domain")
_LAYERS = ("features", "logits", "probs")


class Term(nn.Module):
  """One adaptation term: `__call__(outputs, *, step, train) -> (value, metrics)`.

  The value is unweighted; the method multiplies it by `trade_off`. Fields
  have no defaults: a method's config states every value (TLlib's, in each
  `configs/<method>.py`), so a default lives in one place.

  Attributes:
    trade_off: the term's weight.
    trade_off_warmup: > 0 raises the weight of what reaches the classifier
      from 0 with JAN's progressive schedule over this many steps.
  """

  trade_off: float
  trade_off_warmup: int
  # The label kinds the term is defined for (its outputs read class logits, or not).
  label_kinds: ClassVar[tuple[str, ...]] = ("classification",)

  def __call__(self, outputs: DomainOutputs, *, step: jax.Array,
               train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    raise NotImplementedError


# Terms are registered by the method modules beside this one (each imports
# `terms`): a read imports them all first.
TERMS = registry.Registry("adaptation term", field="config.method.name", scan="tljax.methods")
register_term = TERMS.register  # also registers a method of the term's name


def term_names() -> list[str]:
  return TERMS.names()


def layer(outputs: DomainOutputs, name: str) -> tuple[jax.Array, jax.Array]:
  """Source and target values of `name`: 'features', 'logits' or 'probs'."""
  if name == "features":
    return outputs.source_features, outputs.target_features
  if name == "logits":
    return outputs.source_logits, outputs.target_logits
  if name == "probs":
    return jax.nn.softmax(outputs.source_logits), jax.nn.softmax(outputs.target_logits)
  raise ValueError(f"unknown layer {name!r}; choose from {_LAYERS}")


class ReversalTerm(Term):
  """A term whose network plays against the features through gradient reversal,
  with TLlib's warm-started coefficient
  `lo + (hi - lo) (2 / (1 + exp(-alpha step / max_steps)) - 1)`."""

  grl_alpha: float
  grl_lo: float
  grl_hi: float
  grl_max_steps: int

  def grl_coeff(self, step: jax.Array) -> jax.Array:
    return losses.warm_start_coeff(step, alpha=self.grl_alpha, lo=self.grl_lo,
                                   hi=self.grl_hi, max_steps=self.grl_max_steps)


def _scale_outputs(outputs: DomainOutputs, scale: jax.Array) -> DomainOutputs:
  return outputs.replace(
      source_features=losses.scale_gradient(outputs.source_features, scale),
      target_features=losses.scale_gradient(outputs.target_features, scale),
      source_logits=losses.scale_gradient(outputs.source_logits, scale),
      target_logits=losses.scale_gradient(outputs.target_logits, scale))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TermsMethod(base.Method):
  """Source cross-entropy plus a weighted sum of adaptation terms.

  Attributes:
    terms: `(name, Term)` pairs, in the order they were named.
    forward: 'joint' (one classifier pass over `[source; target]`) or
      'per_domain' (one pass per domain).
    pretrain_steps: steps of source-only training (its own optimizer,
      `pretrain`) before the terms switch on, as TLlib's BSP pre-trains the
      classifier; the main optimizer, its schedule and the terms' own step
      counts (reversal warm start, progressive weight) start at that point.
    pretrain_lr_scale: the pre-training learning rate relative to the main
      one (TLlib's BSP: 0.001 / 0.003).
    trade_off_cls_strong: > 0 adds this weight times the supervised loss on a
      strong view of the labelled batch (`image_strong`,
      `config.data.strong_preprocess`), TLlib's semi-supervised examples'
      `trade_off_cls_strong`; its pass follows the domains' passes.
  """

  terms: tuple[tuple[str, Term], ...]
  forward: str
  pretrain_steps: int
  pretrain_lr_scale: float
  trade_off_cls_strong: float = 0.0

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

  def __post_init__(self):
    if self.forward not in FORWARDS:
      raise ValueError(f"config.method.forward must be one of {FORWARDS}, got {self.forward!r}")

  @property
  def label_kinds(self) -> tuple[str, ...]:
    """The kinds every term is defined for (no term: both)."""
    kinds = ("classification", "regression")
    return tuple(k for k in kinds if all(k in term.label_kinds for _, term in self.terms))

  def networks(self, num_classes, classifier):
    return dict(self.terms)

  def init_networks(self, ctx, rng, variables, outputs):
    out = {}
    for (name, term), key in zip(self.terms, jax.random.split(rng, max(len(self.terms), 1))):
      params_key, dropout_key = jax.random.split(key)
      out[name] = dict(term.init({"params": params_key, "dropout": dropout_key}, outputs,
                                 step=jnp.zeros((), jnp.int32), train=False))
    return out

  def optimizers(self):
    specs = {"main": base.OptimizerSpec()}
    if self.pretrain_steps:
      specs["pretrain"] = base.OptimizerSpec("classifier/.*", self.pretrain_lr_scale)
    return specs

  def phase_boundaries(self):
    return (self.pretrain_steps,) if self.pretrain_steps else ()

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    forward_rng, term_rng = jax.random.split(rng)
    outputs, variables = ctx.forward_domains(variables, source["image"], target["image"],
                                             source["label"], forward_rng,
                                             joint=self.forward == "joint")
    cls_loss = ctx.supervised_loss(outputs.source_logits, outputs.source_labels)
    aux_loss, variables = ctx.auxiliary_loss(variables, outputs.source_labels)
    cls_loss = cls_loss + aux_loss
    if self.trade_off_cls_strong:
      (_, strong_logits), variables = ctx.apply_classifier(
          variables, source["image_strong"], train=True, rng=jax.random.fold_in(forward_rng, 1))
      cls_loss = cls_loss + self.trade_off_cls_strong * ctx.supervised_loss(
          strong_logits, source["label"])
    transfer = jnp.zeros((), float)
    metrics = {}
    for (name, term), key in zip(self.terms, jax.random.split(term_rng, max(len(self.terms), 1))):
      scale = base.progressive_weight(step, term.trade_off_warmup)
      scaled = _scale_outputs(outputs, scale) if term.trade_off_warmup > 0 else outputs
      (value, term_metrics), variables = ctx.apply_network(name, variables, scaled, step=step,
                                                           train=True, rng=key)
      transfer = transfer + term.trade_off * value
      prefix = f"{name}/" if len(self.terms) > 1 else ""
      metrics.update({prefix + k: v for k, v in term_metrics.items()})
      if term.trade_off_warmup > 0:
        metrics[prefix + "warmup_scale"] = scale
    if ctx.aux_loss_weight:
      metrics["aux_loss"] = aux_loss
    metrics.update(cls_loss=cls_loss, transfer_loss=transfer,
                   **ctx.supervised_metrics(outputs.source_logits, outputs.source_labels))
    return cls_loss + transfer, (variables, metrics)

  def train_step(self, ctx, state, batch, rng):
    # The terms count their steps (reversal warm start, progressive weight)
    # from the end of pre-training: TLlib builds its loss modules before
    # pre-training and first calls them after it.
    adapt = lambda s: ctx.update(
        s, "main", lambda v: self.loss(ctx, v, batch, s.step - self.pretrain_steps, rng))
    return pretrain_then(ctx, state, batch, rng, self.pretrain_steps, self.pretrain_lr_scale,
                         adapt)


def source_only_loss(ctx: base.StepContext, variables: base.Variables, batch: dict,
                     rng: jax.Array) -> tuple[jax.Array, tuple[base.Variables, dict]]:
  """ERM's loss: the task's supervised loss (cross-entropy, or a regression
  error) on the source batch, which alone goes through the network."""
  source = batch["source"]
  (_, logits), variables = ctx.apply_classifier(variables, source["image"], train=True, rng=rng)
  aux_loss, variables = ctx.auxiliary_loss(variables, source["label"])
  cls_loss = ctx.supervised_loss(logits, source["label"]) + aux_loss
  metrics = {"cls_loss": cls_loss, **ctx.supervised_metrics(logits, source["label"])}
  if ctx.aux_loss_weight:
    metrics["aux_loss"] = aux_loss
  return cls_loss, (variables, metrics)


def labelled_loss(ctx: base.StepContext, variables: base.Variables, source: dict,
                  rng: jax.Array, *, trade_off_strong: float
                  ) -> tuple[jax.Array, jax.Array, base.Variables]:
  """The labelled batch's loss in TLlib's semi-supervised examples:

      L = CE(f(x_l), y_l) + trade_off_strong * CE(f(x_l_strong), y_l)

  one training pass over `image`, then (when `trade_off_strong` > 0) one over
  its strong view `image_strong` (`Method.source_views`).

  Returns:
    `(loss, logits of image, variables)`.
  """
  weak_rng, strong_rng = jax.random.split(rng)
  (_, logits), variables = ctx.apply_classifier(variables, source["image"], train=True,
                                                rng=weak_rng)
  aux_loss, variables = ctx.auxiliary_loss(variables, source["label"])
  loss = ctx.supervised_loss(logits, source["label"]) + aux_loss
  if trade_off_strong:
    (_, strong_logits), variables = ctx.apply_classifier(variables, source["image_strong"],
                                                         train=True, rng=strong_rng)
    loss = loss + trade_off_strong * ctx.supervised_loss(strong_logits, source["label"])
  return loss, logits, variables


def source_only_update(ctx: base.StepContext, state: base.TrainState, batch: dict,
                       rng: jax.Array, optimizer: str) -> tuple[base.TrainState, dict]:
  """One ERM update of `optimizer` (source batch alone through the network)."""
  return ctx.update(state, optimizer, lambda v: source_only_loss(ctx, v, batch, rng))


def phase_cond(ctx: base.StepContext, state: base.TrainState, until: int, before_fn: Callable,
               after_fn: Callable) -> tuple[base.TrainState, dict]:
  """`before_fn(state)` for steps below `until`, `after_fn(state)` from then on.

  A method using it lists `until` in `phase_boundaries`: the trainer then
  compiles one step per phase and the branch is chosen at trace time
  (`ctx.before`). Without that (a context for any step) it is a `lax.cond`,
  which XLA:CPU runs several times slower than either branch alone. Each side's
  missing metrics are reported as 0, and `pretraining` says which ran, so both
  phases log the same keys."""
  shapes = [jax.eval_shape(fn, state)[1] for fn in (before_fn, after_fn)]
  keys = sorted(set(shapes[0]) | set(shapes[1]))

  def padded(fn, own):
    def run(s):
      new_state, metrics = fn(s)
      full = {k: metrics[k] if k in own else jnp.zeros((), float) for k in keys}
      return new_state, {k: jnp.asarray(v, float) for k, v in full.items()}
    return run

  known = ctx.before(until)
  if known is None:
    predicate = state.step < until
    new_state, metrics = jax.lax.cond(predicate, padded(before_fn, shapes[0]),
                                      padded(after_fn, shapes[1]), state)
  else:
    predicate = jnp.asarray(known)
    new_state, metrics = padded(before_fn if known else after_fn, shapes[0 if known else 1])(state)
  return new_state, {**metrics, "pretraining": predicate.astype(float)}


def pretrain_then(ctx: base.StepContext, state: base.TrainState, batch: dict, rng: jax.Array,
                  pretrain_steps: int, pretrain_lr_scale: float,
                  adapt_fn: Callable) -> tuple[base.TrainState, dict]:
  """ERM on the source batch with the `pretrain` optimizer for `pretrain_steps`
  steps (none: `adapt_fn` from the start), then `adapt_fn(state)`. With a
  pre-training phase, each phase logs the learning rate its optimizer applies:
  the pre-training optimizer's (scaled), then the adaptation optimizers', whose
  schedules start when they first update (TLlib builds a new optimizer and
  scheduler after pre-training)."""
  if not pretrain_steps:
    return adapt_fn(state)

  def logged(fn, scale, offset):
    def run(s):
      new_state, metrics = fn(s)
      return new_state, {**metrics, "learning_rate": scale * ctx.schedule(s.step - offset)}
    return run

  pretrain_fn = lambda s: source_only_update(ctx, s, batch, rng, "pretrain")
  return phase_cond(ctx, state, pretrain_steps, logged(pretrain_fn, pretrain_lr_scale, 0),
                    logged(adapt_fn, 1.0, pretrain_steps))


def create_terms_method(name: str, method_config: dict[str, Any], *, num_classes: int,
                        field_names: Callable[[type], set[str]],
                        convert: Callable[[Any], Any]) -> TermsMethod:
  """`name` is one term or several joined by '+'; see the module docstring."""
  parts = name.split("+")
  method_fields = {f.name for f in dataclasses.fields(TermsMethod)} - {"terms"}
  unknown = [p for p in parts if p not in TERMS]
  if unknown:
    raise ValueError(f"config.method.name {name!r}: {unknown} are not adaptation terms; "
                     f"terms that compose with '+': {', '.join(term_names())}")
  if len(set(parts)) != len(parts):
    raise ValueError(f"config.method.name {name!r} names a term twice")
  top = {k: v for k, v in method_config.items() if k != "name"}
  if len(parts) == 1:
    term_configs = {parts[0]: {k: v for k, v in top.items() if k not in method_fields}}
    top = {k: v for k, v in top.items() if k in method_fields}
  else:
    stray = sorted(set(top) - method_fields - set(parts))
    if stray:
      raise ValueError(f"config.method has fields {stray} that {name!r} does not take: put a "
                       f"term's fields under its name (config.method.{parts[0]}.trade_off, "
                       f"...); shared fields: {sorted(method_fields)}")
    term_configs = {p: dict(top.pop(p, {}) or {}) for p in parts}
  terms = []
  for part in parts:
    cls = TERMS.get(part)
    fields = field_names(cls)
    kwargs = {k: convert(v) for k, v in term_configs[part].items()}
    bad = sorted(set(kwargs) - fields)
    if bad:
      where = "config.method" if len(parts) == 1 else f"config.method.{part}"
      raise ValueError(f"{where} has fields {bad} that {part!r} does not take; it takes "
                       f"{sorted(fields | (method_fields if len(parts) == 1 else set()))}")
    if "num_classes" in fields:
      kwargs.setdefault("num_classes", num_classes)
    missing = sorted(fields - set(kwargs))
    if missing:
      where = "config.method" if len(parts) == 1 else f"config.method.{part}"
      raise ValueError(f"{where} lacks {missing}, which {part!r} needs (see configs/{part}.py)")
    terms.append((part, cls(**kwargs)))
  required = {f.name for f in dataclasses.fields(TermsMethod)
              if f.default is dataclasses.MISSING} - {"terms"}
  missing = sorted(required - set(top))
  if missing:
    raise ValueError(f"config.method lacks {missing} (see configs/{parts[0]}.py)")
  return TermsMethod(terms=tuple(terms), **{k: convert(v) for k, v in top.items()})


__all__ = ["Term", "ReversalTerm", "TermsMethod", "TERMS", "register_term", "term_names",
           "layer", "phase_cond", "pretrain_then", "source_only_loss", "labelled_loss",
           "source_only_update", "create_terms_method", "FORWARDS"]
