"""DomainNet (cleaned), built from the user's copy of the files.

    config.source = "domainnet/real"         # clipart | infograph | painting |
    config.target = "domainnet/sketch"       # quickdraw | real | sketch

TFDS's own `domainnet` builder downloads; this one reads the same files from
`config.manual_dir` (or its folder `domainnet`/`DomainNet`) and writes the same
features, labels and splits (`train`, `test`, from the official lists):

    <root>/<domain>/<class>/*.jpg            (<domain>.zip, extracted)
    <root>/<domain>_train.txt                '<domain>/<class>/<file> <label>' per line
    <root>/<domain>_test.txt                 (also found in <root>/image_list/ or <root>/txt/)

Labels are the index of the file's class folder in the official 345-class
list, which the lists' numbers must agree with.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from tljax.data import image_files
from tljax.data.registry import DATASETS

# The official class order (that of the split lists; not alphabetical).
DOMAINNET_CLASSES = tuple((
    "aircraft_carrier airplane alarm_clock ambulance angel animal_migration ant anvil apple "
    "arm asparagus axe backpack banana bandage barn baseball baseball_bat basket basketball "
    "bat bathtub beach bear beard bed bee belt bench bicycle binoculars bird birthday_cake "
    "blackberry blueberry book boomerang bottlecap bowtie bracelet brain bread bridge "
    "broccoli broom bucket bulldozer bus bush butterfly cactus cake calculator calendar "
    "camel camera camouflage campfire candle cannon canoe car carrot castle cat ceiling_fan "
    "cello cell_phone chair chandelier church circle clarinet clock cloud coffee_cup "
    "compass computer cookie cooler couch cow crab crayon crocodile crown cruise_ship cup "
    "diamond dishwasher diving_board dog dolphin donut door dragon dresser drill drums duck "
    "dumbbell ear elbow elephant envelope eraser eye eyeglasses face fan feather fence "
    "finger fire_hydrant fireplace firetruck fish flamingo flashlight flip_flops floor_lamp "
    "flower flying_saucer foot fork frog frying_pan garden garden_hose giraffe goatee "
    "golf_club grapes grass guitar hamburger hammer hand harp hat headphones hedgehog "
    "helicopter helmet hexagon hockey_puck hockey_stick horse hospital hot_air_balloon "
    "hot_dog hot_tub hourglass house house_plant hurricane ice_cream jacket jail kangaroo "
    "key keyboard knee knife ladder lantern laptop leaf leg light_bulb lighter lighthouse "
    "lightning line lion lipstick lobster lollipop mailbox map marker matches megaphone "
    "mermaid microphone microwave monkey moon mosquito motorbike mountain mouse moustache "
    "mouth mug mushroom nail necklace nose ocean octagon octopus onion oven owl paintbrush "
    "paint_can palm_tree panda pants paper_clip parachute parrot passport peanut pear peas "
    "pencil penguin piano pickup_truck picture_frame pig pillow pineapple pizza pliers "
    "police_car pond pool popsicle postcard potato power_outlet purse rabbit raccoon radio "
    "rain rainbow rake remote_control rhinoceros rifle river roller_coaster rollerskates "
    "sailboat sandwich saw saxophone school_bus scissors scorpion screwdriver sea_turtle "
    "see_saw shark sheep shoe shorts shovel sink skateboard skull skyscraper sleeping_bag "
    "smiley_face snail snake snorkel snowflake snowman soccer_ball sock speedboat spider "
    "spoon spreadsheet square squiggle squirrel stairs star steak stereo stethoscope "
    "stitches stop_sign stove strawberry streetlight string_bean submarine suitcase sun "
    "swan sweater swing_set sword syringe table teapot teddy-bear telephone television "
    "tennis_racquet tent The_Eiffel_Tower The_Great_Wall_of_China The_Mona_Lisa tiger "
    "toaster toe toilet tooth toothbrush toothpaste tornado tractor traffic_light train "
    "tree triangle trombone truck trumpet t-shirt umbrella underwear van vase violin "
    "washing_machine watermelon waterslide whale wheel windmill wine_bottle wine_glass "
    "wristwatch yoga zebra zigzag "
).split())
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DOMAINNET_URL = ("http://ai.bu.edu/M3SDA/ (cleaned version: <domain>.zip and "
                 "<domain>_train.txt / <domain>_test.txt under "
                 "http://csr.bu.edu/ftp/visda/2019/multi-source/)")
_LIST_FOLDERS = ("", "image_list", "txt", "splits")


@DATASETS.register("domainnet")
class DomainNet(image_files.ImageFileBuilder, skip_registration=True):
  """DomainNet (Peng et al., 2019): about 0.6 million images of 345 classes in 6 domains."""

  name = "domainnet"
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=d, description=f"The {d} domain.")
                     for d in DOMAINS]
  CLASS_NAMES = DOMAINNET_CLASSES
  HOMEPAGE = "http://ai.bu.edu/M3SDA/"
  DESCRIPTION = "DomainNet (cleaned): six domains of 345 classes, official train/test lists."
  FOLDER_NAMES = ("domainnet", "DomainNet", "domain_net")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract <domain>.zip and place <domain>_train.txt, <domain>_test.txt so that "
      "<manual_dir>/<domain>/<class>/*.jpg and <manual_dir>/<domain>_train.txt exist.")

  def _split_generators(self, dl_manager):
    domain = self.builder_config.name

    def list_file(root, split):
      for folder in _LIST_FOLDERS:
        path = root / folder / f"{domain}_{split}.txt"
        if path.is_file():
          return path
      return None

    root = image_files.find_root(
        image_files.manual_dir_of(dl_manager), self.FOLDER_NAMES,
        lambda r: (r / domain).is_dir() and list_file(r, "train") is not None,
        what=f"DomainNet ({domain})",
        layout=f"{domain}/<class>/*.jpg\n{domain}_train.txt  (or image_list/{domain}_train.txt)\n"
               f"{domain}_test.txt",
        url=DOMAINNET_URL)
    splits = {}
    for split in ("train", "test"):
      path = list_file(root, split)
      if path is None:
        raise image_files.DatasetFilesNotFoundError(
            f"DomainNet ({domain}): {domain}_{split}.txt is in none of "
            f"{', '.join(str(root / f) for f in _LIST_FOLDERS)}; it is published at "
            f"{DOMAINNET_URL}")
      entries = image_files.entries_from_list(path, [root], self.CLASS_NAMES)
      splits[split] = self._generate_examples(entries)
    return splits
