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

TLlib's semi-supervised `mean_teacher.py` (the configs' `ssl_*` tasks) is the
same step with other settings: no confidence mask (`threshold` 0) and no
class balance; the consistency summed over the batch
(`consistency_reduction='sum'`) at trade-off 0.1 times the sigmoid warm-up
(`warm_up_steps`, `warm_up_interval`, as the Pi-model's); the EMA factor
`min(ema_decay, 1 - 1 / t)` at update `t` (`ema_warmup`), so the teacher
starts as the student; the student's BatchNorm statistics copied into the
teacher after each update (`teacher_batch_stats='student'`, TLlib's
`update_bn`; TLlib copies the layers whose name holds 'bn', here every
one); the teacher's view a second weak augmentation; the labelled loss with
its strong view (`trade_off_cls_strong`, a pass after the student's two).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register

EVALUATE = ("student", "teacher")
TEACHER_BATCH_STATS = ("own", "student")


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
    consistency_reduction: 'mean' or 'sum' of the consistency over the batch.
    warm_up_steps: steps of the sigmoid warm-up of the consistency (0: none).
    warm_up_interval: steps between changes of the warm-up weight.
    ema_warmup: the EMA factor at update t is `min(ema_decay, 1 - 1/t)`.
    teacher_batch_stats: 'own' (the teacher's passes move its statistics) or
      'student' (the student's are copied into it after each update).
    trade_off_cls_strong: weight of the labelled strong-view cross-entropy.
  """

  target_views = ("image_teacher",)

  ema_decay: float
  threshold: float
  trade_off: float
  trade_off_balance: float
  evaluate: str
  consistency_reduction: str = "mean"
  warm_up_steps: int = 0
  warm_up_interval: int = 1
  ema_warmup: bool = False
  teacher_batch_stats: str = "own"
  trade_off_cls_strong: float = 0.0

  def __post_init__(self):
    if self.evaluate not in EVALUATE:
      raise ValueError(f"config.method.evaluate must be one of {EVALUATE}, "
                       f"got {self.evaluate!r}")
    if self.teacher_batch_stats not in TEACHER_BATCH_STATS:
      raise ValueError(f"config.method.teacher_batch_stats must be one of "
                       f"{TEACHER_BATCH_STATS}, got {self.teacher_batch_stats!r}")
    if self.consistency_reduction not in ("mean", "sum"):
      raise ValueError("config.method.consistency_reduction must be 'mean' or 'sum', got "
                       f"{self.consistency_reduction!r}")

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

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

    weight = losses.sigmoid_warm_up(state.step, self.warm_up_steps, self.warm_up_interval)

    def loss_fn(variables):
      outputs, variables = ctx.forward_domains(variables, source["image"], target["image"],
                                               source["label"], student_rng, joint=False)
      cls_loss = base.cross_entropy(outputs.source_logits, outputs.source_labels)
      if self.trade_off_cls_strong:
        (_, strong_logits), variables = ctx.apply_classifier(
            variables, source["image_strong"], train=True, rng=jax.random.fold_in(student_rng, 1))
        cls_loss = cls_loss + self.trade_off_cls_strong * base.cross_entropy(strong_logits,
                                                                             source["label"])
      probs = jax.nn.softmax(outputs.target_logits)
      consistency = losses.l2_consistency_loss(probs, teacher_probs, mask,
                                               reduction=self.consistency_reduction)
      balance = losses.class_balance_loss(probs) * jnp.mean(mask)
      scale = self.trade_off * weight if self.warm_up_steps else self.trade_off
      transfer = scale * consistency + self.trade_off_balance * balance
      return cls_loss + transfer, (variables, {
          "cls_loss": cls_loss, "transfer_loss": transfer, "consistency_loss": consistency,
          "balance_loss": balance, "confident_ratio": jnp.mean(mask),
          "source_train_accuracy": base.accuracy(outputs.source_logits, outputs.source_labels)})

    state, metrics = ctx.update(state, "main", loss_fn)
    if self.warm_up_steps:
      metrics["warm_up_weight"] = weight
    student = base.owned(state.variables, base.CLASSIFIER)
    decay = self.ema_decay
    if self.ema_warmup:
      # TLlib's `set_alpha(min(alpha, 1 - 1 / global_step))`, global_step = state.step + 1.
      decay = jnp.minimum(decay, 1.0 - 1.0 / (state.step + 1).astype(float))
    stats = ({c: v for c, v in student.items() if c != "params"}
             if self.teacher_batch_stats == "student" else teacher_stats)
    new_teacher = {**teacher, **stats,
                   "params": ema_update(teacher["params"], student["params"], decay)}
    return state.replace(method_state={**state.method_state, "teacher": new_teacher}), metrics

  def eval_variables(self, ctx, state, batch_statistics):
    if self.evaluate == "teacher":
      return state.method_state["teacher"]
    return base.owned(state.variables, base.CLASSIFIER)
