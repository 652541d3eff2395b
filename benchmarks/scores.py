"""Timings of the transferability scores and the validators on one eval pass.

    python -m benchmarks.scores                             # n = 2000, d = 256, C = 10 and 345
    python -m benchmarks.scores --n=5000 --classes=10 --repeats=5

Synthetic float32 arrays: `n` target rows and `n` source validation rows with
`d`-dimensional features and `C`-class logits (class-dependent means, so the
scores are not degenerate). For each function: compile time
(`jit(...).lower(...).compile()`) and the median warm time of `--repeats`
calls (`block_until_ready`).
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

from tljax import ranking
from tljax import validators

_N = flags.DEFINE_integer("n", 2000, "target rows (and source validation rows)")
_D = flags.DEFINE_integer("d", 256, "feature dimension")
_CLASSES = flags.DEFINE_list("classes", ["10", "345"], "class counts to time")
_REPEATS = flags.DEFINE_integer("repeats", 7, "warm calls per function")


def _problem(n: int, d: int, num_classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, d))
  readout = rng.normal(size=(d, num_classes)) / np.sqrt(d)

  def domain(offset):
    labels = rng.integers(0, num_classes, n)
    features = np.float32(centres[labels] + 2.0 * rng.normal(size=(n, d)) + offset)
    return features, np.float32(4.0 * features @ readout), labels

  source_features, source_logits, source_labels = domain(0.0)
  target_features, target_logits, target_labels = domain(0.2)
  return dict(source_features=source_features, source_logits=source_logits,
              source_labels=source_labels, target_features=target_features,
              target_logits=target_logits, target_labels=target_labels)


def _time(fn, args, kwargs, repeats):
  # The keyword arguments here are all static options: close over them.
  compiled = jax.jit(lambda *arrays: fn(*arrays, **kwargs))
  start = time.perf_counter()
  compiled = compiled.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  return compile_s, statistics.median(runs), min(runs)


def main(argv):
  del argv
  rows = []
  for num_classes in map(int, _CLASSES.value):
    p = _problem(_N.value, _D.value, num_classes)
    target_probs = np.asarray(jax.nn.softmax(p["target_logits"]))
    cases = {
        "ranking.logme": (ranking.logme, (p["target_features"], p["target_labels"]),
                          {"num_classes": num_classes}),
        "ranking.h_score": (ranking.h_score, (p["target_features"], p["target_labels"]),
                            {"num_classes": num_classes}),
        "ranking.leep": (ranking.leep, (target_probs, p["target_labels"]),
                         {"num_classes": num_classes}),
        "ranking.nce": (ranking.nce, (target_probs, p["target_labels"]),
                        {"num_classes": num_classes}),
        "source_accuracy": (validators.source_accuracy,
                            (p["source_logits"], p["source_labels"]), {}),
        "target_entropy": (validators.target_entropy, (p["target_logits"],), {}),
        "snd": (validators.snd, (p["target_logits"],), {}),
        "snd_features": (validators.snd, (p["target_features"],), {"softmax": False}),
        "bnm": (validators.bnm_score, (p["target_logits"],), {}),
        "importance_weights": (validators.importance_weights,
                               (p["source_features"], p["target_features"]), {}),
        "dev": (validators.dev, (p["source_logits"], p["source_labels"],
                                 p["source_features"], p["target_features"]), {}),
        "iwcv": (validators.iwcv, (p["source_logits"], p["source_labels"],
                                   p["source_features"], p["target_features"]), {}),
    }
    for name, (fn, args, kwargs) in cases.items():
      compile_s, run_s, best_s = _time(fn, args, kwargs, _REPEATS.value)
      row = dict(function=name, n=_N.value, d=_D.value, classes=num_classes,
                 compile_s=round(compile_s, 3), run_s=round(run_s, 4), best_s=round(best_s, 4))
      rows.append(row)
      print(json.dumps(row), flush=True)
  print()
  print(f"{'function':<20} {'C':>4} {'compile s':>10} {'median ms':>10} {'min ms':>9}")
  for row in rows:
    print(f"{row['function']:<20} {row['classes']:>4} {row['compile_s']:>10.2f} "
          f"{1000 * row['run_s']:>10.1f} {1000 * row['best_s']:>9.1f}")


if __name__ == "__main__":
  app.run(main)
