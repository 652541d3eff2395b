"""Multi-task heads: one trunk, one head per task (tljax/methods/multitask.py).

    python -m tljax.main --config=configs/multitask.py:digits --workdir=/tmp/tljax/multitask
    python -m tljax.main --config=configs/multitask.py:two_datasets --workdir=/tmp/tljax/multitask2

`digits`: three labels of the same embedded digits: the digit (the classifier's
own head), its parity, and whether it is 5 or more, every task every step.
`two_datasets`: the digits of `digits` and of `digits_m` (photo-blended), each
with its own head and labelled data. `office31`: Amazon and Webcam objects,
one head each, from an ImageNet ResNet-50 (`--config.model.init=...`). Each
head's test accuracy is in results.json's `method_metrics`
(`<task>_accuracy`); `--config.method.sampling=uniform` draws one task per step.
"""

import ml_collections

from configs import default


def task(name: str, *, dataset: str = "", label_map: str | None = None, num_classes: int,
         split: str = "train", eval_split: str = "test", weight: float = 1.0) -> dict:
  """One task's fields, all stated."""
  return {"name": name, "dataset": dataset, "split": split, "eval_split": eval_split,
          "label_map": label_map, "num_classes": num_classes, "weight": weight}


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  if arg not in ("digits", "two_datasets", "office31"):
    raise ValueError(f"unknown multitask example {arg!r}: digits, two_datasets or office31")
  config = default.get_config("office31" if arg == "office31" else "digits")
  # Every task is labelled: the run's own data is `source`; it is also the
  # evaluated target, and nothing reads unlabelled data.
  config.target = config.source
  config.target_split = config.eval_target_split = config.eval_source_split
  config.source_val_split = ""
  config.validation.validators = ()
  if arg == "digits":
    tasks = (task("digit", num_classes=10),
             task("parity", label_map="parity", num_classes=2),
             task("ge5", label_map="ge5", num_classes=2))
  elif arg == "two_datasets":
    tasks = (task("digits", num_classes=10),
             task("digits_m", dataset="digits_m", num_classes=10))
  else:
    config.source_split = "train[:80%]"
    config.target_split = config.eval_target_split = config.eval_source_split = "train[80%:]"
    config.model.dont_load = ("head/.*",)
    tasks = (task("amazon", num_classes=31),
             task("webcam", dataset="office31/webcam", split="train[:80%]",
                  eval_split="train[80%:]", num_classes=31))
  config.method = ml_collections.ConfigDict({"name": "multitask", "tasks": tasks,
                                             "sampling": "all"})
  return config
