"""tljax: transfer learning and unsupervised domain adaptation in JAX."""

__version__ = "0.1.0"
