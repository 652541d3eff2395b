"""Noisy Student (Xie et al. 2020): a round of distilling a teacher run into a noised student.

    python -m tljax.main --config=configs/source_only.py:ssl_digits --workdir=/tmp/tljax/ns/round0
    python -m tljax.main --config=configs/noisy_student.py:ssl_digits --workdir=/tmp/tljax/ns/round1 \\
        --config.method.teacher=/tmp/tljax/ns/round0
    python -m tljax.main --config=configs/noisy_student.py:ssl_digits --workdir=/tmp/tljax/ns/round2 \\
        --config.method.teacher=/tmp/tljax/ns/round1

TLlib's semi-supervised `noisy_student.py` (and `noisy_student.sh`): round 0
is ERM (`configs/source_only.py`), then rounds 1, 2, 3 each with the
previous round as teacher; distillation trade-off 1 at temperature 0.5 (its
scripts' value for the rounds; the script's default is 2), labelled
strong-view cross-entropy at 0.1; the student starts where the task says
(`config.model.init`, not the teacher). A sweep chains the rounds with
`init_from` and `init_field='method.teacher'` (see `tljax/sweep.py`).
"""

import ml_collections

from configs import default


def get_config(arg: str = "ssl_digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "noisy_student",
      "teacher": "",  # the previous round's workdir
      "temperature": 0.5,
      "trade_off": 1.0,
      "trade_off_cls_strong": 0.1,
  })
  return config
