"""Benchmark: tljax's jitted shallow methods vs the numpy/scipy references.

    python -m benchmarks.shallow                       # n_s = n_t = 2000, d = 2048
    python -m benchmarks.shallow --n=500 --d=256 --out=/tmp/bench.json

Both sides (`benchmarks.shallow_timing`) run the whole pipeline of each
method on the same synthetic problem (a Gaussian mixture in a low-dimensional
latent space, lifted to `d` dimensions; the target has shifted class means
and a different lift): fit the adaptation, embed both domains, label the
target by 1-NN. For tljax, compile time (`jit(...).lower(...).compile()`) is
reported separately from the warm run time (median of `--repeats` calls after
a warm-up call, `block_until_ready`).
The reference runs once, in float64, as the authors' code would.

The references of JDA and BDA repeat a dense QZ eigen-solve (`scipy.linalg.eig`)
in every iteration, which at d = 2048 takes minutes each; by default they run
`--reference_T=1` iteration and the time is scaled to `T` iterations (marked
"extrapolated"). Pass `--reference_T=10` for the full run.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import jax

from benchmarks import shallow_timing
from tljax.shallow import ops

_N = flags.DEFINE_integer("n", 2000, "Samples per domain (n_s = n_t).")
_D = flags.DEFINE_integer("d", 2048, "Feature dimension.")
_CLASSES = flags.DEFINE_integer("classes", 10, "Number of classes.")
_METHODS = flags.DEFINE_list("methods", list(shallow_timing.ALL_METHODS), "Methods to benchmark.")
_DIM = flags.DEFINE_integer("dim", 30, "Embedding dim for TCA/JDA/BDA/SA.")
_GFK_DIM = flags.DEFINE_integer("gfk_dim", 20, "Subspace dim for GFK.")
_ITERATIONS = flags.DEFINE_integer("T", 10, "JDA/BDA iterations (tljax).")
_REFERENCE_ITERATIONS = flags.DEFINE_integer(
    "reference_T", 1, "JDA/BDA iterations actually run by the reference; its time "
    "is scaled to --T.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm tljax calls to take the median of.")
_SKIP_REFERENCE = flags.DEFINE_bool("skip_reference", False, "Time tljax only.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic data.")
_OUT = flags.DEFINE_string("out", None, "If set, write the results as JSON here.")


def main(argv):
  del argv
  unknown = [m for m in _METHODS.value if m not in shallow_timing.ALL_METHODS]
  if unknown:
    raise app.UsageError(
        f"unknown methods {unknown}; choose from {shallow_timing.ALL_METHODS}")
  device = jax.devices()[0]
  header = (f"n_s = n_t = {_N.value}, d = {_D.value}, {_CLASSES.value} classes, "
            f"dim = {_DIM.value}, GFK dim = {_GFK_DIM.value}, T = {_ITERATIONS.value}; "
            f"tljax on {device.platform} ({device.device_kind}) in "
            f"{ops.float_dtype().name}, reference numpy/scipy float64")
  print(header, flush=True)
  rows = shallow_timing.run_benchmark(
      n=_N.value, d=_D.value, num_classes=_CLASSES.value, method_names=_METHODS.value,
      dim=_DIM.value, gfk_dim=_GFK_DIM.value, iterations=_ITERATIONS.value,
      reference_iterations=_REFERENCE_ITERATIONS.value, repeats=_REPEATS.value,
      skip_reference=_SKIP_REFERENCE.value, seed=_SEED.value,
      log=lambda line: print(line, flush=True))
  print()
  print(shallow_timing.format_table(rows, header))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"config": {"n": _N.value, "d": _D.value, "classes": _CLASSES.value,
                            "dim": _DIM.value, "gfk_dim": _GFK_DIM.value,
                            "T": _ITERATIONS.value, "reference_T": _REFERENCE_ITERATIONS.value,
                            "repeats": _REPEATS.value, "backend": device.platform,
                            "device": device.device_kind,
                            "dtype": ops.float_dtype().name},
                 "results": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
