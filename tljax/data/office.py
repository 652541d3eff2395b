"""Office-31 and Office-Home, built from the user's copy of the files.

    config.source = "office31/amazon"      # amazon | dslr | webcam
    config.source = "office_home/art"      # art | clipart | product | real_world

Each domain is a builder config with one split, `train`: all of its images, as
in TLlib's protocol (train on the source, adapt and evaluate on all target
images). The root is `config.manual_dir` or a folder of it named like the
dataset (`office31/`, `OfficeHome/`, ...), in either of the layouts the data is
found in:

    Office-31                                  Office-Home
    <root>/amazon/images/<class>/*.jpg         <root>/Art/<class>/*.jpg
    <root>/image_list/amazon.txt  (TLlib)      <root>/image_list/Art.txt  (TLlib)

With an image list, exactly the listed files are stored; without one, every
image in the class folders. Either way the label is the index of the file's
class folder in the dataset's class list, so every domain (and both layouts)
numbers the classes identically.
"""

from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from tljax.data import image_files
from tljax.data.registry import DATASETS

# The 31 classes, alphabetical: the order of TLlib's lists.
OFFICE31_CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair",
    "desk_lamp", "desktop_computer", "file_cabinet", "headphones", "keyboard",
    "laptop_computer", "letter_tray", "mobile_phone", "monitor", "mouse", "mug",
    "paper_notebook", "pen", "phone", "printer", "projector", "punchers", "ring_binder",
    "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can")

# The 65 classes, sorted (by code point, as `sorted(os.listdir(...))` numbers them).
OFFICE_HOME_CLASSES = (
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator",
    "Calendar", "Candles", "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp",
    "Drill", "Eraser", "Exit_Sign", "Fan", "File_Cabinet", "Flipflops", "Flowers", "Folder",
    "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard", "Knives", "Lamp_Shade",
    "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
    "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio",
    "Refrigerator", "Ruler", "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda",
    "Speaker", "Spoon", "TV", "Table", "Telephone", "ToothBrush", "Toys", "Trash_Can",
    "Webcam")

OFFICE31_URL = ("https://faculty.cc.gatech.edu/~judy/domainadapt/ (Office-31, "
                "domain_adaptation_images.tar.gz; TLlib's image lists: "
                "https://github.com/thuml/Transfer-Learning-Library)")
OFFICE_HOME_URL = ("https://www.hemanthdv.org/officeHomeDataset.html "
                   "(OfficeHomeDataset_10072016.zip)")


def _domain_configs(names: tuple[str, ...]) -> list[tfds.core.BuilderConfig]:
  return [tfds.core.BuilderConfig(name=name, description=f"The {name} domain.") for name in names]


@DATASETS.register("office31")
class Office31(image_files.ImageFileBuilder, skip_registration=True):
  """Office-31 (Saenko et al., 2010): 4,110 images of 31 office objects in 3 domains."""

  name = "office31"
  BUILDER_CONFIGS = _domain_configs(("amazon", "dslr", "webcam"))
  CLASS_NAMES = OFFICE31_CLASSES
  HOMEPAGE = "https://faculty.cc.gatech.edu/~judy/domainadapt/"
  DESCRIPTION = "Office-31: amazon (product photos), dslr and webcam images of 31 classes."
  FOLDER_NAMES = ("office31", "Office31", "office-31", "Office-31", "OFFICE31")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract domain_adaptation_images.tar.gz so that <manual_dir>/amazon/images/<class>/*.jpg "
      "exists (or <manual_dir>/office31/...).")

  def _split_generators(self, dl_manager):
    domain = self.builder_config.name
    list_name = pathlib.Path("image_list", f"{domain}.txt")
    root = image_files.find_root(
        image_files.manual_dir_of(dl_manager), self.FOLDER_NAMES,
        lambda r: (r / domain / "images").is_dir() or (r / list_name).is_file(),
        what=f"Office-31 ({domain})",
        layout=f"{domain}/images/<class>/*.jpg\n{list_name}  (optional, TLlib's list)",
        url=OFFICE31_URL)
    if (root / list_name).is_file():
      entries = image_files.entries_from_list(root / list_name, [root], self.CLASS_NAMES)
    else:
      entries = image_files.entries_from_class_folders(root / domain / "images", self.CLASS_NAMES,
                                                       relative_to=root)
    return {"train": self._generate_examples(entries)}


@DATASETS.register("office_home")
class OfficeHome(image_files.ImageFileBuilder, skip_registration=True):
  """Office-Home (Venkateswara et al., 2017): 15,588 images of 65 classes in 4 domains."""

  name = "office_home"
  BUILDER_CONFIGS = _domain_configs(("art", "clipart", "product", "real_world"))
  CLASS_NAMES = OFFICE_HOME_CLASSES
  HOMEPAGE = "https://www.hemanthdv.org/officeHomeDataset.html"
  DESCRIPTION = "Office-Home: Art, Clipart, Product and Real World images of 65 classes."
  FOLDER_NAMES = ("office_home", "OfficeHome", "office-home", "officehome", "Office-Home",
                  "OfficeHomeDataset_10072016")
  # The release calls the last domain "Real World"; TLlib renamed it "Real_World".
  DOMAIN_FOLDERS = {"art": ("Art",), "clipart": ("Clipart",), "product": ("Product",),
                    "real_world": ("Real_World", "Real World")}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract OfficeHomeDataset_10072016.zip so that <manual_dir>/Art/<class>/*.jpg exists "
      "(or <manual_dir>/OfficeHome/...).")

  def _split_generators(self, dl_manager):
    domain = self.builder_config.name
    folders = self.DOMAIN_FOLDERS[domain]
    list_name = pathlib.Path("image_list", f"{folders[0]}.txt")
    root = image_files.find_root(
        image_files.manual_dir_of(dl_manager), self.FOLDER_NAMES,
        lambda r: any((r / f).is_dir() for f in folders) or (r / list_name).is_file(),
        what=f"Office-Home ({domain})",
        layout=f"{folders[0]}/<class>/*.jpg\n{list_name}  (optional, TLlib's list)",
        url=OFFICE_HOME_URL)
    if (root / list_name).is_file():
      entries = image_files.entries_from_list(root / list_name, [root], self.CLASS_NAMES)
    else:
      folder = next(root / f for f in folders if (root / f).is_dir())
      entries = image_files.entries_from_class_folders(folder, self.CLASS_NAMES, relative_to=root)
    return {"train": self._generate_examples(entries)}
