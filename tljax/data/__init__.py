"""Datasets and input pipelines.

A *domain* is a split of a TFDS dataset, named `dataset[/config]` (e.g.
`digits`, `digits_m`, `office31/amazon`). Builders for the datasets TFDS lacks
live in this package and register themselves with TFDS on import; `open_domain`
builds a dataset into the TFDS data dir on first use (from installed packages or
from files the user already has, never from the network) and opens a
random-access source over it, which `pipeline.py` turns into batches.
"""

from tljax.data.registry import Domain, dataset_names, open_domain  # noqa: F401
