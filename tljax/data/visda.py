"""VisDA-2017 classification, built from the user's copy of the files.

    config.source = "visda2017/train"        # synthetic renderings of 3D models
    config.target = "visda2017/validation"   # real photographs (MS COCO crops)

Each domain is a builder config with one split, `train` (TLlib's protocol:
the whole validation domain is the adaptation and evaluation set). The root
is `config.manual_dir` or a folder of it named `visda2017`/`visda-2017`/...,
holding the release's folders with their lists, or TLlib's lists:

    <root>/train/image_list.txt          'aeroplane/src_1_....png 0' per line
    <root>/train/<class>/*.png
    <root>/validation/image_list.txt     'aeroplane/....jpg 0' per line
    <root>/validation/<class>/*.jpg
    <root>/image_list/train.txt          (TLlib: 'train/aeroplane/... 0'; used if present)

Without a list, every image in the class folders is stored. Labels are the
index of the file's class folder in the 12 classes, as in `office.py`.
"""

from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from tljax.data import image_files
from tljax.data.registry import DATASETS

VISDA2017_CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle",
                     "person", "plant", "skateboard", "train", "truck")
VISDA2017_URL = ("https://github.com/VisionLearningGroup/taskcv-2017-public/tree/master/"
                 "classification (train.tar, validation.tar from "
                 "http://csr.bu.edu/ftp/visda17/clf/)")


@DATASETS.register("visda2017")
class VisDA2017(image_files.ImageFileBuilder, skip_registration=True):
  """VisDA-2017 (Peng et al., 2017): 152,397 synthetic and 55,388 real images of 12 classes."""

  name = "visda2017"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="train", description="Synthetic renderings (source)."),
      tfds.core.BuilderConfig(name="validation", description="Real photographs (target)."),
  ]
  CLASS_NAMES = VISDA2017_CLASSES
  HOMEPAGE = "http://ai.bu.edu/visda-2017/"
  DESCRIPTION = "VisDA-2017 classification: synthetic (train) and real (validation) domains."
  FOLDER_NAMES = ("visda2017", "visda-2017", "VisDA2017", "VisDA-2017", "visda")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract train.tar and validation.tar so that <manual_dir>/train/image_list.txt exists "
      "(or <manual_dir>/visda2017/...).")

  def _split_generators(self, dl_manager):
    domain = self.builder_config.name
    release_list = pathlib.Path(domain, "image_list.txt")
    tllib_list = pathlib.Path("image_list", f"{domain}.txt")
    root = image_files.find_root(
        image_files.manual_dir_of(dl_manager), self.FOLDER_NAMES,
        lambda r: (r / domain).is_dir(),
        what=f"VisDA-2017 ({domain})",
        layout=f"{domain}/<class>/*.{'png' if domain == 'train' else 'jpg'}\n"
               f"{release_list}  (the release's list: '<class>/<file> <label>' per line)\n"
               f"{tllib_list}  (or TLlib's list)",
        url=VISDA2017_URL)
    if (root / tllib_list).is_file():
      entries = image_files.entries_from_list(root / tllib_list, [root, root / domain],
                                              self.CLASS_NAMES)
    elif (root / release_list).is_file():
      entries = image_files.entries_from_list(root / release_list, [root / domain, root],
                                              self.CLASS_NAMES)
    else:
      entries = image_files.entries_from_class_folders(root / domain, self.CLASS_NAMES,
                                                       relative_to=root)
    return {"train": self._generate_examples(entries)}
