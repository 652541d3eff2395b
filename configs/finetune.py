"""Fine-tuning: a pretrained network trained on a task's own labelled data (ERM from a checkpoint).

    python -m tljax.main --config=configs/source_only.py:synth --workdir=/tmp/tljax/pretrain_synth
    python -m tljax.main --config=configs/finetune.py:synth_m --workdir=/tmp/tljax/finetune_synth_m \\
        --config.model.init=/tmp/tljax/pretrain_synth

The plain-transfer setting of TLlib's `examples/task_adaptation` (its `erm.py`
with `--finetune`): no domain adaptation; the task's training split is the
labelled `source`, the run evaluates on its test split (reported as both
source and target accuracy), and nothing reads unlabelled data. The
pretrained classifier comes from `config.model.init` (a tljax run's workdir, or
a checkpoint file); its head is replaced by a new one (`dont_load=head/.*`).
Without `model.init` the run trains from scratch.

Tasks (`:<task>`), each the target of a `configs/source_only.py` pretraining:
  digits   -> digits_m        (pretrain: configs/source_only.py:digits, on digits)
  synth    -> digits_full     (pretrain: configs/source_only.py:synth, on synth_digits)
  synth_m  -> digits_m_full   (pretrain: configs/source_only.py:synth, on synth_digits)
  mnist_m  -> mnist5k_m       (pretrain: configs/source_only.py:mnist_m, on mnist5k)
  mnist_digits -> digits_full (pretrain: configs/source_only.py:mnist_digits, on mnist5k_8x8)
  office31 -> office31/webcam (an ImageNet ResNet-50 file; 80% train / 20% test)
  office31_inception -> office31/webcam (an ImageNet Inception-v3 file, 299 px, its
                        auxiliary classifier trained at weight 0.4 as in torchvision's
                        recipe: `model.aux_loss_weight`)

TLlib's fine-tuning recipe: SGD (momentum 0.9, Nesterov, lr 0.01, weight
decay 5e-4), batch 48, the pretrained parts at 0.1x the rate (`--finetune`),
the rate x0.1 at 60% of training (`--lr-decay-epochs 12` of 20 epochs).
`--config.data.source_fraction=0.1` keeps 10% of the labels (stratified,
seeded by `data.source_subset_seed`), TLlib's `-sr`; `--config.data.label_map=parity`
makes a different task on the same images.
"""

import ml_collections

from configs import default

TARGETS = {"digits": "digits_m", "synth": "digits_full", "synth_m": "digits_m_full",
           "mnist_m": "mnist5k_m", "mnist_digits": "digits_full", "office31": "office31/webcam",
           "office31_inception": "office31/webcam"}

# The parameters a pretrained tljax classifier provides (backbone and
# bottleneck); a torchvision checkpoint provides the backbone alone.
PRETRAINED = {"digits": "classifier/(backbone|bottleneck)/.*",
              "synth": "classifier/(backbone|bottleneck)/.*",
              "synth_m": "classifier/(backbone|bottleneck)/.*",
              "mnist_m": "classifier/(backbone|bottleneck)/.*",
              "mnist_digits": "classifier/(backbone|bottleneck)/.*",
              "office31": "classifier/backbone/.*",
              # The auxiliary classifier's fc predicts the task's classes: new, like the head.
              "office31_inception": "classifier/backbone/(?!AuxLogits/fc/).*"}


def finetune_task(config: ml_collections.ConfigDict, arg: str) -> None:
  """The task's own data as source and (evaluation-only) target; a new head;
  TLlib's fine-tuning optimizer."""
  if arg not in TARGETS:
    raise ValueError(f"unknown fine-tuning task {arg!r}: choose one of {sorted(TARGETS)}")
  config.source = config.target = TARGETS[arg]
  config.source_split = "train"
  # The step reads only the labelled source; the target is evaluated (the same
  # test split, so it is predicted once per evaluation and nothing else).
  config.target_split = config.eval_target_split = config.eval_source_split = "test"
  config.source_val_split = ""
  config.validation.validators = ()
  config.model.dont_load = ("head/.*",)
  config.param_groups = ((PRETRAINED[arg], 0.1), (".*", 1.0))
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 5e-4
  config.batch_size = 48
  config.total_steps = 1000
  config.schedule.name = "step"
  config.schedule.boundaries = (600,)
  config.schedule.decay = 0.1
  config.eval_every = config.checkpoint_every = 500
  if arg.startswith("office31"):
    # One split: 80% to fine-tune on, 20% to evaluate.
    config.source_split = "train[:80%]"
    config.target_split = config.eval_target_split = config.eval_source_split = "train[80%:]"
    config.model.bottleneck_dim = 0
    config.total_steps = 10000
    config.schedule.boundaries = (6000,)
    config.eval_every = config.checkpoint_every = 1000
  if arg == "office31_inception":
    _inception_v3(config)


def _inception_v3(config: ml_collections.ConfigDict) -> None:
  """torchvision's Inception-v3 recipe on 299 px crops: ImageNet-normalised
  images taken to the [-1, 1] scaling of Google's weights (`transform_input`),
  and the auxiliary classifier on `Mixed_6e` trained beside the head,
  `loss = CE(logits) + 0.4 * CE(aux_logits)`."""
  config.data.image_size = 299
  config.model.name = "inception_v3"
  config.model.backbone_kwargs = ml_collections.ConfigDict({"aux_logits": True,
                                                            "transform_input": True})
  config.model.aux_loss_weight = 0.4
  config.model.init_recipe = (
      "Pass ImageNet weights: --config.model.init=/path/to/inception_v3_google-0cc3c7bd.pth "
      "(torchvision's IMAGENET1K_V1 file, read as is).")
  # Both classifiers' final layers predict the task's classes: their
  # initialisation stays.
  config.model.dont_load = ("head/.*", "backbone/AuxLogits/fc/.*")


# The run each embedded task's pretrained classifier comes from.
PRETRAINING = {"digits": "digits", "synth": "synth", "synth_m": "synth", "mnist_m": "mnist_m",
               "mnist_digits": "mnist_digits"}


def require_pretrained(config: ml_collections.ConfigDict, name: str, arg: str) -> None:
  """For the fine-tuning methods whose point is the starting network (Co-Tuning,
  L2-SP, DELTA, BSS): a run without `model.init` is refused, with the two
  commands of the method's docstring (Office-31: ImageNet weights, as every
  Office-31 config)."""
  config.model.init_required = True
  if arg in PRETRAINING:
    pretrain = f"/tmp/tljax/pretrain_{PRETRAINING[arg]}"
    config.model.init_recipe = (
        f"Pretrain, then start from that run: `python -m tljax.main --config=configs/"
        f"source_only.py:{PRETRAINING[arg]} --workdir={pretrain}` then `python -m tljax.main "
        f"--config=configs/{name}.py:{arg} --workdir=/tmp/tljax/{name} "
        f"--config.model.init={pretrain}`.")


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config("office31" if arg.startswith("office31") else "digits")
  finetune_task(config, arg)
  config.method = ml_collections.ConfigDict({"name": "source_only"})
  return config
