"""Shallow (feature-level) domain adaptation: TCA, JDA, BDA, CORAL, SA, GFK.

These methods adapt fixed feature vectors (e.g. a backbone's penultimate
features) rather than train a network. The numeric core (`methods.py`) is pure
jitted JAX, so the same code runs on CPU, GPU or TPU; `estimators.py` gives the
scikit-learn style classes, `analysis.py` the shift diagnostics (proxy
A-distance, MMD, t-SNE), `reference.py` plain numpy/scipy versions for tests and
benchmarks.

    python -m tljax.shallow --features=features.npz --out=/tmp/shallow

Their timing against `reference.py`: `python -m benchmarks.shallow` (from the
repository root).
"""

from tljax.shallow.analysis import balance_factor
from tljax.shallow.analysis import estimate_balance_factor
from tljax.shallow.analysis import mmd_between
from tljax.shallow.analysis import proxy_a_distance
from tljax.shallow.analysis import tsne_plot
from tljax.shallow.estimators import BDA
from tljax.shallow.estimators import CORAL
from tljax.shallow.estimators import GFK
from tljax.shallow.estimators import JDA
from tljax.shallow.estimators import METHODS
from tljax.shallow.estimators import NoAdaptation
from tljax.shallow.estimators import SA
from tljax.shallow.estimators import TCA

__all__ = [
    "BDA", "CORAL", "GFK", "JDA", "METHODS", "NoAdaptation", "SA", "TCA",
    "balance_factor", "estimate_balance_factor", "mmd_between",
    "proxy_a_distance", "tsne_plot",
]
