"""Mean teacher for domain adaptation (French et al., "Self-ensembling for
visual domain adaptation", ICLR 2018; Tarvainen & Valpola, "Mean teachers are
better role models", NeurIPS 2017), as TLlib's `self_ensemble.py`.

The student is the classifier; the teacher is an exponential moving average
of its parameters, `teacher <- alpha teacher + (1 - alpha) student` after
every update (TLlib's `EMATeacher`, alpha 0.99), kept with its own BatchNorm
statistics in `TrainState.method_state['teacher']`, so it is checkpointed
and resumed with the rest of the state. Each step:

- the student classifies the source batch (cross-entropy) and one view of
  the target batch (`image`, the training augmentation); the teacher, in
  training mode as TLlib's (its BatchNorm normalises with the batch and
  updates its own running statistics; its parameters get no gradient), sees
  a second view (`image_teacher`, `config.data.teacher_preprocess`: TLlib
  gives it the evaluation transform);
- where the teacher's confidence exceeds `threshold` (0.8), the squared L2
  distance between the two softmax outputs is penalised (`trade_off`, 3);
- a class-balance loss (BCE between the student's mean target prediction
  and the uniform distribution, scaled by the fraction of confident
  examples; `trade_off_balance`, 0.01) keeps the predictions spread.

Evaluation: `evaluate='student'` (TLlib's choice: `self_ensemble.py`
validates `classifier`, the student) or 'teacher' (the EMA weights, which the
paper reports).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register

EVALUATE = ("student", "teacher")


def ema_update(teacher: base.Variables, student: base.Variables, decay: float) -> base.Variables:
  """`decay * teacher + (1 - decay) * student`, leaf by leaf."""
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


@register("mean_teacher")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanTeacher(base.Method):
  """Consistency with an EMA teacher on two views of the target batch.

  Attributes:
    ema_decay: the teacher's EMA factor `alpha`.
    threshold: teacher confidence above which consistency applies.
    trade_off: weight of the consistency loss.
    trade_off_balance: weight of the class-balance loss.
    evaluate: 'student' or 'teacher'.
  """

  target_views = ("image_teacher",)

  ema_decay: float
  threshold: float
  trade_off: float
  trade_off_balance: float
  evaluate: str

  def __post_init__(self):
    if self.evaluate not in EVALUATE:
      raise ValueError(f"config.method.evaluate must be one of {EVALUATE}, "
                       f"got {self.evaluate!r}")

  def init_method_state(self, ctx, variables):
    # The teacher starts as the classifier (after `config.model.init` is loaded).
    return {"teacher": base.owned(variables, base.CLASSIFIER)}

  def train_step(self, ctx, state, batch, rng):
    source, target = batch["source"], batch["target"]
    student_rng, teacher_rng = jax.random.split(rng)
    teacher = state.method_state["teacher"]
    mutable = [c for c in teacher if c != "params"]
    (_, teacher_logits), teacher_stats = ctx.classifier.apply(
        teacher, target["image_teacher"], train=True, mutable=mutable,
        rngs={"dropout": teacher_rng})
    teacher_probs = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits))
    mask = (jnp.max(teacher_probs, axis=-1) > self.threshold).astype(jnp.float32)

    def loss_fn(variables):
      outputs, variables = ctx.forward_domains(variables, source["image"], target["image"],
                                               source["label"], student_rng, joint=False)
      cls_loss = base.cross_entropy(outputs.source_logits, outputs.source_labels)
      probs = jax.nn.softmax(outputs.target_logits)
      consistency = losses.l2_consistency_loss(probs, teacher_probs, mask)
      balance = losses.class_balance_loss(probs) * jnp.mean(mask)
      transfer = self.trade_off * consistency + self.trade_off_balance * balance
      return cls_loss + transfer, (variables, {
          "cls_loss": cls_loss, "transfer_loss": transfer, "consistency_loss": consistency,
          "balance_loss": balance, "confident_ratio": jnp.mean(mask),
          "source_train_accuracy": base.accuracy(outputs.source_logits, outputs.source_labels)})

    state, metrics = ctx.update(state, "main", loss_fn)
    student = base.owned(state.variables, base.CLASSIFIER)
    new_teacher = {**teacher, **teacher_stats,
                   "params": ema_update(teacher["params"], student["params"], self.ema_decay)}
    return state.replace(method_state={**state.method_state, "teacher": new_teacher}), metrics

  def eval_variables(self, ctx, state, batch_statistics):
    if self.evaluate == "teacher":
      return state.method_state["teacher"]
    return base.owned(state.variables, base.CLASSIFIER)
