"""Input handling shared by the losses: float32 at least, `(n, d)` matrices, and
explicitly sharded batches gathered before batch-coupling operations.

Under `jax.jit` with a mesh whose axes are `AxisType.Explicit` (the default of
`jax.make_mesh`), JAX refuses operations like `x @ x.T` or an SVD on an array
sharded along its batch axis, because the result's sharding would be
ambiguous. The losses couple every pair of samples and their inputs are small
`(n, d)` feature matrices, so they gather such inputs (one all-gather, what the
compiler inserts by itself for auto-sharded inputs) and compute replicated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def gather_if_explicitly_sharded(x: jax.Array) -> jax.Array:
  """Replicates `x` when its type carries an explicit sharding; else returns it."""
  sharding = jax.typeof(x).sharding
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or AxisType.Explicit not in tuple(mesh.axis_types):
    return x
  if all(axis is None for axis in sharding.spec):
    return x
  return jax.sharding.reshard(x, NamedSharding(mesh, PartitionSpec()))


def as_float(x: jax.Array) -> jax.Array:
  """`x` as an array of at least float32 (sums of kernel values lose too much in
  bf16), gathered if explicitly sharded."""
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return gather_if_explicitly_sharded(x)


def as_float_matrix(x: jax.Array) -> jax.Array:
  """`(n, *)` -> `(n, d)` via `as_float`."""
  x = as_float(x)
  return x.reshape(x.shape[0], -1)
