r"""The PyTorch side of `benchmarks.end_to_end`: a whole digits run as TLlib's examples run it.

    python -m benchmarks.torch_end_to_end --data=DIGITS.npz --config=configs/dann.py:digits \
        --total_steps=400 [--tllib=PATH] --out=FILE.json

Started by `benchmarks.end_to_end` (one process per run, PyTorch alone in it).
The loop is TLlib's `train` + `validate` of its DANN / MCC examples: a
`DataLoader` per domain (shuffled, `drop_last`, cycled as TLlib's
`ForeverDataIterator` does), forward, loss, backward, SGD step and
scheduler step every iteration, the target test split's accuracy at the end.
The network, optimizer groups and schedule are the tljax config's
(`benchmarks.torch_reference.Reference`); the adaptation loss is TLlib's own
module (`tllib.alignment.dann.DomainAdversarialLoss` with its
`DomainDiscriminator`, `tllib.self_training.mcc.MinimumClassConfusionLoss`)
when `--tllib` points at a Transfer-Learning-Library checkout (it needs
`prettytable` installed), else the restatement in `torch_reference`. On the
GPU when there is one.
"""

from __future__ import annotations

import time

_START = time.time()

import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import torch_reference  # noqa: E402

_DATA = flags.DEFINE_string("data", None,
                            "The digits arrays (`benchmarks.end_to_end` writes them).")
_CONFIG = flags.DEFINE_string("config", "configs/dann.py:digits", "tljax config (file:arg).")
_TOTAL_STEPS = flags.DEFINE_integer("total_steps", 400, "Iterations.")
_TLLIB = flags.DEFINE_string("tllib", None, "A Transfer-Learning-Library checkout: use its "
                             "loss modules (else the restatement in torch_reference).")
_OUT = flags.DEFINE_string("out", None, "Where the figures go (JSON).")


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  return module.get_config(arg) if arg else module.get_config()


class _Forever:
  """TLlib's `ForeverDataIterator`: a `DataLoader` restarted when exhausted."""

  def __init__(self, loader):
    self.loader, self.iterator = loader, iter(loader)

  def __next__(self):
    try:
      return next(self.iterator)
    except StopIteration:
      self.iterator = iter(self.loader)
      return next(self.iterator)


def _loader(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
            drop_last: bool) -> torch.utils.data.DataLoader:
  """TLlib's digits transform (ToTensor, Normalize(0.5, 0.5)) over in-memory
  uint8 images, as tljax's `digits` preprocessing reads them."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.5)
  dataset = torch.utils.data.TensorDataset(x, torch.from_numpy(labels).long())
  return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                     drop_last=drop_last, num_workers=0)


def _tllib_loss(config, reference: torch_reference.Reference):
  """`loss(x_s, labels_s, x_t) -> loss` with TLlib's own modules (its
  discriminator in place of the restated one, so that the optimizer groups
  and the train mode reach it)."""
  np.float = float  # TLlib's metric helpers use the alias NumPy 1.24 removed
  # The package without its `__init__`, which imports every subpackage (and
  # numba, for its ranking module): only the modules below are read.
  package = types.ModuleType("tllib")
  package.__path__ = [os.path.join(_TLLIB.value, "tllib")]
  sys.modules["tllib"] = package
  method = config.method
  classifier = reference.world["classifier"]
  if method.name == "dann":
    # pylint: disable=g-import-not-at-top  (TLlib is found only once its path is known)
    from tllib.alignment.dann import DomainAdversarialLoss
    from tllib.modules.domain_discriminator import DomainDiscriminator
    from tllib.modules.grl import WarmStartGradientReverseLayer
    discriminator = DomainDiscriminator(config.model.bottleneck_dim, method.hidden_sizes[0])
    grl = WarmStartGradientReverseLayer(alpha=method.grl_alpha, lo=method.grl_lo,
                                        hi=method.grl_hi, max_iters=method.grl_max_steps,
                                        auto_step=True)
    term = DomainAdversarialLoss(discriminator, grl=grl)
    reference.world["method"]["dann"]["discriminator"] = discriminator

    def loss(x_s, labels_s, x_t):
      y, f = classifier(torch.cat((x_s, x_t), dim=0))
      y_s, _ = y.chunk(2, dim=0)
      f_s, f_t = f.chunk(2, dim=0)
      return F.cross_entropy(y_s, labels_s) + term(f_s, f_t) * method.trade_off

    return loss
  if method.name == "mcc":
    # pylint: disable=g-import-not-at-top  (as above)
    from tllib.self_training.mcc import MinimumClassConfusionLoss
    term = MinimumClassConfusionLoss(temperature=method.temperature)

    def loss(x_s, labels_s, x_t):
      y, _ = classifier(torch.cat((x_s, x_t), dim=0))
      y_s, y_t = y.chunk(2, dim=0)
      return F.cross_entropy(y_s, labels_s) + term(y_t) * method.trade_off

    return loss
  raise ValueError(f"--tllib: no TLlib module wired for method {method.name!r} (dann, mcc)")


def main(argv):
  del argv
  config = _load_config(_CONFIG.value)
  data = np.load(_DATA.value)
  num_classes = int(data["num_classes"])
  image = tuple(int(v) for v in data["source_images"].shape[1:])
  torch.manual_seed(config.seed)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  reference = torch_reference.Reference(config, None, num_classes=num_classes, image=image,
                                        dtype=torch.float32)
  batch = config.batch_size
  source = _Forever(_loader(data["source_images"], data["source_labels"], batch, True, True))
  target = _Forever(_loader(data["target_images"], np.zeros(len(data["target_images"])), batch,
                            True, True))
  loss_fn = _tllib_loss(config, reference) if _TLLIB.value else reference.adaptation_loss
  reference.world.to(device)
  optimizer, scheduler = reference.optimizer(config.optimizer.learning_rate)
  synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  setup_s = time.time() - _START
  loop_start = time.time()
  first_step_s = None
  for step in range(_TOTAL_STEPS.value):
    x_s, labels_s = (t.to(device, non_blocking=True) for t in next(source))
    x_t = next(target)[0].to(device, non_blocking=True)
    reference.train_mode()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(x_s, labels_s, x_t)
    loss.backward()
    optimizer.step()
    scheduler.step()
    if step == 0:
      synchronize()
      first_step_s = time.time() - loop_start
      loop_start = time.time()
  synchronize()
  loop_s = time.time() - loop_start
  eval_start = time.time()
  classifier = reference.world["classifier"]
  classifier.eval()
  correct = 0
  with torch.no_grad():
    for x, labels in _loader(data["eval_images"], data["eval_labels"],
                             config.eval_batch_size, False, False):
      correct += int((classifier(x.to(device))[0].argmax(1).cpu() == labels).sum())
  figures = {
      "loss_modules": "tllib" if _TLLIB.value else "torch_reference", "device": device,
      "torch": torch.__version__, "threads": torch.get_num_threads(),
      "start_up_s": setup_s, "first_step_s": first_step_s, "training_loop_s": loop_s,
      "train_steps_per_second": (_TOTAL_STEPS.value - 1) / loop_s,
      "evaluation_s": time.time() - eval_start,
      "target_accuracy": correct / len(data["eval_labels"]),
      "final_loss": float(loss.detach()),
  }
  with open(_OUT.value, "w") as f:
    json.dump(figures, f, indent=2)


if __name__ == "__main__":
  app.run(main)
