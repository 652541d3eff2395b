"""Noisy Student (Xie et al., "Self-training with Noisy Student improves
ImageNet classification", CVPR 2020), as TLlib's semi-supervised
`noisy_student.py`: one round of teacher -> student.

The teacher is a finished tljax run (`teacher`: its workdir, or
`<workdir>/checkpoints/<step>`) of the same network on the same task: ERM for
the first round (TLlib's round 0), the previous round's student after that.
Before the first step its predictions on every unlabelled example are
computed once (evaluation mode, no dropout: TLlib's `calc_teacher_output`)
and kept in the train state (`method_state['teacher_logits']`, restored with
it on a resume). The student, started as any run (`config.model.init`: the
pretrained network, not the teacher, as TLlib's), learns the labelled loss
plus `trade_off` times the cross-entropy between the teacher's softened
prediction and its own on a strong view of the unlabelled image, both
logits divided by `temperature` (`losses.soft_cross_entropy`), the noise
being the strong augmentation and the classifier's dropout.

Rounds are a chain of runs, each naming the previous one as its teacher:

    python -m tljax.main --config=configs/source_only.py:ssl_digits --workdir=/tmp/ns/round0
    python -m tljax.main --config=configs/noisy_student.py:ssl_digits --workdir=/tmp/ns/round1 \\
        --config.method.teacher=/tmp/ns/round0

TLlib computes the teacher's outputs on a weak augmentation of each image,
drawn once; here on the evaluation preprocessing. The labelled loss is
TLlib's (`terms.labelled_loss`); two training passes (labelled weak and
strong) then the unlabelled strong view.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from tljax import losses
from tljax import workdir as workdir_lib
from tljax.methods import base, register, terms


@register("noisy_student")
@dataclasses.dataclass(frozen=True, kw_only=True)
class NoisyStudent(base.Method):
  """Distillation of a fixed teacher's unlabelled predictions into a noised student.

  Attributes:
    teacher: the teacher run (a workdir or one of its checkpoints).
    temperature: divides both logits of the distillation loss.
    trade_off: weight of the distillation loss.
    trade_off_cls_strong: weight of the labelled strong-view cross-entropy.
  """

  target_views = ("image_strong",)
  refresh_every = base.REFRESH_ONCE

  teacher: str
  temperature: float
  trade_off: float
  trade_off_cls_strong: float

  def __post_init__(self):
    if self.temperature <= 0:
      raise ValueError(f"config.method.temperature={self.temperature} must be > 0")

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

  def check_task(self, labels, *, has_target, num_source_domains, source_sampling="per_domain"):
    super().check_task(labels, has_target=has_target, num_source_domains=num_source_domains,
                       source_sampling=source_sampling)
    if not self.teacher:
      raise ValueError("Noisy Student needs a teacher: set --config.method.teacher to a "
                       "finished run's workdir (ERM for the first round)")
    if not workdir_lib.is_workdir(self.teacher) and not os.path.isdir(self.teacher):
      raise ValueError(f"config.method.teacher={self.teacher!r} is not a tljax run's workdir "
                       "or checkpoint; give the workdir of the previous round")

  def init_method_state(self, ctx, variables):
    dtype = jax.tree.leaves(variables["params"])[0].dtype
    return {"teacher_logits": jnp.zeros((ctx.num_target_examples, ctx.num_classes), dtype)}

  def refresh(self, ctx, state, predict):
    teacher, _ = workdir_lib.classifier_variables(self.teacher)
    _, logits = predict(teacher)
    if logits.shape != state.method_state["teacher_logits"].shape:
      raise ValueError(f"the teacher {self.teacher} predicts {logits.shape[1]} classes for "
                       f"{logits.shape[0]} unlabelled examples; this run has "
                       f"{state.method_state['teacher_logits'].shape}: train the teacher on "
                       "the same task")
    sharding = state.method_state["teacher_logits"].sharding
    logits = jax.device_put(jnp.asarray(logits, state.method_state["teacher_logits"].dtype),
                            sharding)
    return state.replace(method_state={**state.method_state, "teacher_logits": logits})

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    labelled_rng, strong_rng = jax.random.split(rng)
    cls_loss, logits, variables = terms.labelled_loss(
        ctx, variables, source, labelled_rng, trade_off_strong=self.trade_off_cls_strong)
    (_, strong_logits), variables = ctx.apply_classifier(variables, target["image_strong"],
                                                         train=True, rng=strong_rng)
    # The method state is not an argument of `loss`: read through `batch` (see train_step).
    teacher_logits = batch["teacher_logits"]
    distillation = losses.soft_cross_entropy(strong_logits, teacher_logits,
                                             temperature=self.temperature)
    transfer = self.trade_off * distillation
    return cls_loss + transfer, (variables, {
        "cls_loss": cls_loss, "transfer_loss": transfer,
        **ctx.supervised_metrics(logits, source["label"])})

  def train_step(self, ctx, state, batch, rng):
    teacher_logits = state.method_state["teacher_logits"][batch["target"]["index"]]
    batch = {**batch, "teacher_logits": teacher_logits}
    return ctx.update(state, "main", lambda v: self.loss(ctx, v, batch, state.step, rng))
