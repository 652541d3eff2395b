"""tljax's jitted shallow methods timed against the numpy/scipy references.

The library behind `python -m benchmarks.shallow`. Both sides run the whole
pipeline of each method on the same synthetic problem (`synthetic_problem`: a
Gaussian mixture in a low-dimensional latent space, lifted to `d` dimensions;
the target has shifted class means and a different lift): fit the
adaptation, embed both domains, label the target by 1-NN. For tljax, compile
time (`jit(...).lower(...).compile()`) is reported separately from the warm run
time (median of `repeats` calls after a warm-up call, `block_until_ready`).
The reference runs once, in float64, as the authors' code would.

The references of JDA and BDA repeat a dense QZ eigen-solve (`scipy.linalg.eig`)
in every iteration, which at d = 2048 takes minutes each; with
`reference_iterations` < `iterations` they run that many and the time is
scaled to `iterations` (marked "extrapolated").
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from tljax.shallow import methods
from tljax.shallow import ops
from tljax.shallow import reference

ALL_METHODS = ("tca", "jda", "bda", "coral", "sa", "gfk")


def synthetic_problem(n: int, d: int, num_classes: int, seed: int = 0, latent: int = 64):
  """Gaussian-mixture source/target features with a domain shift."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(num_classes, latent)) * 1.5
  lift = rng.normal(size=(latent, d)) / np.sqrt(latent)
  target_lift = lift + 0.5 * rng.normal(size=(latent, d)) / np.sqrt(latent)
  source_labels = np.arange(n) % num_classes
  target_labels = rng.permutation(np.arange(n) % num_classes)
  source = (means[source_labels] + rng.normal(size=(n, latent))) @ lift
  target = (means[target_labels] + 0.8 + rng.normal(size=(n, latent))) @ target_lift
  source += 0.3 * rng.normal(size=(n, d))
  target += 0.3 * rng.normal(size=(n, d))
  return source, source_labels, target, target_labels


def _tljax_pipelines(dim, gfk_dim, iterations, num_classes):
  """Method -> jitted `(source, source_labels, target) -> target predictions`."""

  def tca(source, labels, target):
    fitted = methods.transfer_component_analysis(source, target, dim=dim)
    num_source = source.shape[0]
    return ops.nearest_neighbor_predict(fitted.embedding[:num_source], labels,
                                        fitted.embedding[num_source:])

  def joint(marginal_weight, conditional_weight):
    def run(source, labels, target):
      fitted = methods.joint_distribution_adaptation(
          source, labels, target, num_classes=num_classes, dim=dim,
          iterations=iterations, marginal_weight=marginal_weight,
          conditional_weight=conditional_weight)
      return fitted.pseudo_labels[-1]
    return run

  def coral(source, labels, target):
    matrix = methods.coral(source, target)
    return ops.nearest_neighbor_predict(ops.matmul(source, matrix), labels, target)

  def sa(source, labels, target):
    fitted = methods.subspace_alignment(source, target, dim=dim)
    return ops.nearest_neighbor_predict(
        ops.matmul(source - fitted.source_mean, fitted.source_map), labels,
        ops.matmul(target - fitted.target_mean, fitted.target_basis))

  def gfk(source, labels, target):
    fitted = methods.geodesic_flow_kernel(source, target, dim=gfk_dim)
    return ops.nearest_neighbor_predict(ops.matmul(source, fitted.embedding_map),
                                        labels, ops.matmul(target, fitted.embedding_map))

  # JDA: M0 + sum_c M_c; BDA with mu = 0.5: 0.5 M0 + 0.5 sum_c M_c (the same
  # after normalisation, but each side runs its own formula).
  return {"tca": jax.jit(tca), "jda": jax.jit(joint(1.0, 1.0)), "bda": jax.jit(joint(0.5, 0.5)),
          "coral": jax.jit(coral), "sa": jax.jit(sa), "gfk": jax.jit(gfk)}


def _reference_pipeline(method, source, labels, target, dim, gfk_dim, iterations):
  """Runs the numpy reference; returns `(target predictions, iterations run)`."""
  if method == "tca":
    source_z, target_z, _ = reference.tca(source, target, dim=dim)
    return reference.nearest_neighbor(source_z, labels, target_z), 1
  if method == "jda":
    _, _, history, _ = reference.jda(source, labels, target, dim=dim, T=iterations)
    return history[-1], iterations
  if method == "bda":
    _, _, history, _, _ = reference.bda(source, labels, target, dim=dim, mu=0.5,
                                        T=iterations)
    return history[-1], iterations
  if method == "coral":
    return reference.nearest_neighbor(reference.coral(source, target), labels, target), 1
  if method == "sa":
    source_z, target_z = reference.subspace_alignment(source, target, dim=dim)
    return reference.nearest_neighbor(source_z, labels, target_z), 1
  if method == "gfk":
    kernel = reference.gfk_kernel(source, target, dim=gfk_dim)
    return reference.gfk_predict(kernel, source, labels, target), 1
  raise ValueError(method)


def _time(fn, *args):
  """`(wall seconds, process CPU seconds, result)` of one blocking call.

  CPU time sums all threads of this process (XLA's and BLAS's alike). On a
  shared CPU host it is much less sensitive to other jobs than wall time, so
  its ratio is the steadier comparison there; on an accelerator only wall time
  means anything.
  """
  start_wall, start_cpu = time.perf_counter(), time.process_time()
  result = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start_wall, time.process_time() - start_cpu, result


def run_benchmark(*, n, d, num_classes, method_names, dim, gfk_dim, iterations,
                  reference_iterations, repeats, skip_reference=False, seed=0,
                  log=print):
  """Times every method both ways; returns one dict per method."""
  source, source_labels, target, target_labels = synthetic_problem(n, d, num_classes, seed)
  dtype = ops.float_dtype()
  device_args = (jnp.asarray(source, dtype), jnp.asarray(source_labels, jnp.int32),
                 jnp.asarray(target, dtype))
  pipelines = _tljax_pipelines(dim, gfk_dim, iterations, num_classes)
  rows = []
  for method in method_names:
    # Compile ahead of time so compile time is measured on its own, not as
    # cold-minus-warm (which run-time noise on a shared machine swamps).
    start = time.perf_counter()
    pipelines[method].lower(*device_args).compile()
    compile_time = time.perf_counter() - start
    _, _, predictions = _time(pipelines[method], *device_args)  # warm-up call
    timings = [_time(pipelines[method], *device_args)[:2] for _ in range(max(repeats, 1))]
    warm = statistics.median(wall for wall, _ in timings)
    predictions = np.asarray(predictions)
    row = {
        "method": method,
        "tljax_compile_s": compile_time,
        "tljax_warm_s": warm,
        "tljax_warm_cpu_s": statistics.median(cpu for _, cpu in timings),
        "tljax_accuracy": float(np.mean(predictions == target_labels)),
    }
    if not skip_reference:
      iterations_run = min(reference_iterations, iterations) if method in ("jda", "bda") else 1
      elapsed, cpu, (reference_predictions, _) = _time(
          _reference_pipeline, method, source, source_labels, target, dim, gfk_dim,
          iterations_run)
      extrapolated = method in ("jda", "bda") and iterations_run < iterations
      scale = iterations / iterations_run if extrapolated else 1
      row.update({
          "reference_s": elapsed * scale,
          "reference_cpu_s": cpu * scale,
          "reference_measured_s": elapsed,
          "reference_iterations": iterations_run if method in ("jda", "bda") else None,
          "reference_extrapolated": extrapolated,
          "reference_accuracy": float(np.mean(reference_predictions == target_labels)),
          # With fewer reference iterations the predictions are not comparable.
          "prediction_agreement": (None if extrapolated else
                                   float(np.mean(reference_predictions == predictions))),
      })
      row["speedup"] = row["reference_s"] / warm
      row["cpu_time_ratio"] = row["reference_cpu_s"] / max(row["tljax_warm_cpu_s"], 1e-9)
    rows.append(row)
    log(_format_row(row))
  return rows


def _format_row(row):
  text = (f"{row['method']:>6} | tljax compile {row['tljax_compile_s']:7.2f} s | "
          f"warm {row['tljax_warm_s']:8.3f} s | acc {row['tljax_accuracy']:.3f}")
  if "reference_s" in row:
    mark = "*" if row["reference_extrapolated"] else " "
    agreement = row["prediction_agreement"]
    text += (f" | reference {row['reference_s']:8.2f} s{mark}| acc "
             f"{row['reference_accuracy']:.3f} | ratio {row['speedup']:7.1f}x "
             f"(cpu {row['cpu_time_ratio']:.1f}x) | "
             f"agree {'  -  ' if agreement is None else f'{agreement:.3f}'}")
  return text


def format_table(rows, header):
  """The rows as a markdown table under `header`."""
  lines = [header,
           "| method | tljax compile (s) | tljax warm (s) | numpy ref (s) | ratio ref/warm "
           "| CPU-time ratio | tljax acc | ref acc | same 1-NN labels |",
           "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    if "reference_s" in row:
      note = (f" (extrapolated from {row['reference_iterations']} iteration(s): "
              f"{row['reference_measured_s']:.1f} s)" if row["reference_extrapolated"] else "")
      agreement = row["prediction_agreement"]
      reference_cells = (f"{row['reference_s']:.2f}{note} | {row['speedup']:.1f}x | "
                         f"{row['cpu_time_ratio']:.1f}x | "
                         f"{row['tljax_accuracy']:.3f} | {row['reference_accuracy']:.3f} | "
                         f"{'-' if agreement is None else f'{agreement:.3f}'}")
    else:
      reference_cells = f"- | - | - | {row['tljax_accuracy']:.3f} | - | -"
    lines.append(f"| {row['method']} | {row['tljax_compile_s']:.2f} | "
                 f"{row['tljax_warm_s']:.3f} | {reference_cells} |")
  return "\n".join(lines)
