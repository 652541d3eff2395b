"""PACS (Li et al., "Deeper, Broader and Artier Domain Generalization", ICCV
2017), built from the user's copy of the files.

    config.source = "pacs/photo,pacs/art_painting,pacs/cartoon"   # labelled domains
    config.test_domains = "pacs/sketch"                          # held out

9,991 images of 7 classes (dog, elephant, giraffe, guitar, horse, house,
person) in 4 domains: art_painting, cartoon, photo, sketch. Each domain is a
builder config with one split, `train`: all of its images, as TLlib's DG
protocol reads them (`split='all'`; training-domain validation holds out a
part, `config.data.holdout_fraction`). The root is `config.manual_dir` or a
folder of it named like the dataset (`PACS/`, `pacs/`), in either of the
layouts the data is found in:

    <root>/kfold/<domain>/<class>/*.jpg          (the official release)
    <root>/<domain>/<class>/*.jpg                (TLlib's download)
    <root>/image_list/<domain>_all.txt           (optional, TLlib's list)

With an image list, exactly the listed files are stored (its paths relative
to the root or to `kfold/`); without one, every image in the class folders.
Either way the label is the index of the file's class folder in the class
list (TLlib's lists number the classes from 1; their numbers only have to
agree with the folders).
"""

from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from tljax.data import image_files
from tljax.data.registry import DATASETS

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
PACS_URL = ("https://domaingeneralization.github.io/#data (PACS.zip, the 'kfold' images; "
            "TLlib's image lists: https://github.com/thuml/Transfer-Learning-Library)")


@DATASETS.register("pacs")
class PACS(image_files.ImageFileBuilder, skip_registration=True):
  """PACS: photos, art paintings, cartoons and sketches of 7 classes."""

  name = "pacs"
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=d, description=f"The {d} domain.")
                     for d in PACS_DOMAINS]
  CLASS_NAMES = PACS_CLASSES
  HOMEPAGE = "https://domaingeneralization.github.io/"
  DESCRIPTION = "PACS: Photo, Art painting, Cartoon and Sketch images of 7 classes."
  FOLDER_NAMES = ("PACS", "pacs")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract PACS.zip so that <manual_dir>/kfold/<domain>/<class>/*.jpg exists (or "
      "<manual_dir>/PACS/kfold/..., or TLlib's <manual_dir>/<domain>/<class>/*.jpg).")

  def _split_generators(self, dl_manager):
    domain = self.builder_config.name
    list_name = pathlib.Path("image_list", f"{domain}_all.txt")

    def images_of(root):
      for base in (root / "kfold", root):
        if (base / domain).is_dir():
          return base / domain
      return None

    root = image_files.find_root(
        image_files.manual_dir_of(dl_manager), self.FOLDER_NAMES,
        lambda r: images_of(r) is not None or (r / list_name).is_file(),
        what=f"PACS ({domain})",
        layout=(f"kfold/{domain}/<class>/*.jpg\n{domain}/<class>/*.jpg  (TLlib)\n"
                f"{list_name}  (optional, TLlib's list)"),
        url=PACS_URL)
    if (root / list_name).is_file():
      entries = image_files.entries_from_list(root / list_name, [root, root / "kfold"],
                                              self.CLASS_NAMES)
    else:
      entries = image_files.entries_from_class_folders(images_of(root), self.CLASS_NAMES,
                                                       relative_to=root)
    return {"train": self._generate_examples(entries)}
