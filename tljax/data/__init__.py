"""Datasets and input pipelines.

A *domain* is a split of a dataset, named `dataset[/config]` (`digits`,
`digits_m`, `office31/amazon`, `domainnet/real`, ...) or, for a user's own
data, `image_folder:PATH` / `image_list:FILE`. `open_domain` builds the dataset
as TFDS array_record files on first use (from installed packages for the
embedded digits, otherwise from files the user already has in `manual_dir`,
never from the network) and opens a random-access source over it;
`pipeline.py` turns domains into sharded, reproducible batches and
`preprocess.py` holds the per-example preprocessing presets.
"""

from tljax.data.registry import Domain, available_splits, dataset_names, open_domain  # noqa: F401
