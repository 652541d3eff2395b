"""DSAN (Zhu et al. 2020): local MMD between the classes of the two domains.

    python -m tljax.main --config=configs/dsan.py:digits --workdir=/tmp/tljax/dsan

The authors' DSAN (github.com/easezyc/deep-transfer-learning, UDA/pytorch1.0/
DSAN): trade-off 0.5 raised by the progressive weight `2 / (1 + exp(-10 p)) -
1` over the whole run (`trade_off_warmup` follows `config.total_steps`; the
authors step it per epoch), five Gaussian kernels with bandwidths 2^-2..2^2
times the mean pairwise squared distance, class weights from the source
labels and the target softmax, one pass per domain. Not in TLlib.

Office-31 (ResNet-50, the authors' hyperparameters: lr 0.001 for the backbone
and 0.01 for the bottleneck (256) and head, SGD momentum 0.9, wd 5e-4,
learning rate `lr / (1 + 10 p)^0.75`, batch 32, 200 epochs of the source
(Amazon: 88 iterations each)). Their bottleneck is a plain Linear layer;
tljax's has a ReLU after it (`bottleneck_norm=False` leaves out the
BatchNorm):

    python -m tljax.main --config=configs/dsan.py:office31 --workdir=/tmp/tljax/dsan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "trade_off": 0.5,
      # The whole run (get_config ties it to config.total_steps).
      "trade_off_warmup": 17600 if task == "office31" else 2000,
      "kernel_mul": 2.0,
      "kernel_num": 5,
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("dsan", "per_domain", {"dsan": term(arg)})
  if arg == "office31":
    config.total_steps = 17600
    config.batch_size = 32
    config.optimizer.learning_rate = 0.01  # x0.1 on the backbone
    config.optimizer.weight_decay = 5e-4
    config.optimizer.nesterov = False
    config.model.bottleneck_norm = False
    config.schedule.gamma = 10.0 / config.get_ref("total_steps").to_float()
  config.method.trade_off_warmup = config.get_ref("total_steps")
  return config
