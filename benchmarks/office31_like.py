"""Folders of JPEGs in Office-31's layout, for the benchmarks that read images.

`write_office31_like` writes crops of scikit-image's sample photographs (so
that they compress as photographs do) as
`<root>/<domain>/images/<class>/frame_XXXX.jpg` over Office-31's 31 classes;
tljax's `office31/<domain>` builder and torchvision's `ImageFolder` read them
as they read the real dataset.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import PIL.Image
import skimage.data

from benchmarks import cases
from tljax.data.office import OFFICE31_CLASSES


def write_office31_like(root: str, num_images: int, side: int, seed: int = 0,
                        domain: str = "amazon") -> None:
  """`num_images` JPEGs of `side` px in `root/<domain>/images/<class>/`, over the 31 classes."""
  photos = [getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
  photos = [PIL.Image.fromarray(np.asarray(p[..., :3], np.uint8)) for p in photos]
  rng = np.random.default_rng(seed)
  for index in range(num_images):
    name = OFFICE31_CLASSES[index % len(OFFICE31_CLASSES)]
    folder = os.path.join(root, domain, "images", name)
    os.makedirs(folder, exist_ok=True)
    photo = photos[rng.integers(len(photos))]
    crop = int(min(photo.size) * rng.uniform(0.5, 1.0))
    left = rng.integers(photo.size[0] - crop + 1)
    top = rng.integers(photo.size[1] - crop + 1)
    image = photo.crop((left, top, left + crop, top + crop)).resize((side, side))
    image.save(os.path.join(folder, f"frame_{index:04d}.jpg"), quality=90)


def write_adapt_data(data_dir: str, config: ml_collections.ConfigDict, num_images: int) -> None:
  """JPEGs in Office-31's layout under `data_dir/office31/` for the config's
  source and target domains (`cases.ADAPT_IMAGE_SIDE` px), unless already there."""
  for seed, name in enumerate((config.source, config.target)):
    domain = name.split("/", 1)[1]
    if not os.path.isdir(os.path.join(data_dir, "office31", domain)):
      write_office31_like(os.path.join(data_dir, "office31"), num_images,
                          cases.ADAPT_IMAGE_SIDE, seed=seed, domain=domain)
