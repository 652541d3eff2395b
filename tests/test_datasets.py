"""Dataset builders on tiny fake copies in the real on-disk layouts, through the pipeline.

Every fake is written the way the data is distributed (class folders of real
JPEG/PNG files, the release's and TLlib's list files, IDX/.mat/.h5/LIBSVM
files), with every class of the real dataset present, and read only through
`open_domain(name, split, data_dir=..., manual_dir=...)`: nothing here can
reach the network.
"""

import bz2
import gzip
import io
import logging
import pathlib
import pickle
import struct

import numpy as np
import PIL.Image
import pytest

from tljax.data import available_splits, open_domain
from tljax.data import pipeline
from tljax.data.digit_benchmarks import DIGIT_CLASSES
from tljax.data.domainnet import DOMAINNET_CLASSES
from tljax.data.image_files import DatasetFilesNotFoundError, UnreadableImageError, load_checked
from tljax.data.office import OFFICE31_CLASSES, OFFICE_HOME_CLASSES
from tljax.data.preprocess import decode_image, get_preprocess
from tljax.data.visda import VISDA2017_CLASSES

SMALL_EVAL = {"name": "imagenet_eval", "size": 24, "resize": 28}
SMALL_TRAIN = {"name": "imagenet_train", "size": 24, "resize": 28}


def _save(path: pathlib.Path, rng, size=(10, 14), fmt="JPEG", mode="RGB") -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
  PIL.Image.fromarray(pixels).convert(mode).save(path, format=fmt)


def _labels_by_file(domain):
  """file_name -> label of every example of a domain."""
  return {domain.source[i]["file_name"].decode(): int(domain.source[i]["label"])
          for i in range(len(domain))}


def _check_labels_follow_folders(domain, part=-2):
  """Every label names the folder at `part` of the example's path (default: its parent)."""
  labels = _labels_by_file(domain)
  assert labels
  for file_name, label in labels.items():
    assert domain.class_names[label] == pathlib.PurePosixPath(file_name).parts[part], file_name


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


# ----------------------------------------------------------------------------
# Office-31: amazon as the release's folders, webcam through TLlib's list.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def office31_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("manual") / "office31"
  rng = np.random.default_rng(0)
  for name in OFFICE31_CLASSES:
    for k in range(2):
      _save(root / "amazon" / "images" / name / f"frame_{k:04d}.jpg", rng, size=(12 + k, 16))
  # TLlib's list numbers classes in its own order; give it a different one to
  # show that labels come from the folders.
  lines = []
  for number, name in enumerate(reversed(OFFICE31_CLASSES)):
    path = f"webcam/images/{name}/frame_0001.jpg"
    _save(root / path, rng, size=(9, 11))
    lines.append(f"{path} {number}")
  (root / "image_list").mkdir()
  (root / "image_list" / "webcam.txt").write_text("\n".join(lines) + "\n")
  return root


def test_office31_from_folders_and_from_a_list(office31_dir, data_dir):
  # manual_dir may hold the dataset's folder instead of being it.
  amazon = open_domain("office31/amazon", "train", data_dir=data_dir,
                       manual_dir=str(office31_dir.parent))
  webcam = open_domain("office31/webcam", "train", data_dir=data_dir, manual_dir=str(office31_dir))
  assert amazon.class_names == webcam.class_names == OFFICE31_CLASSES
  assert amazon.num_classes == 31 and len(amazon) == 62 and len(webcam) == 31
  assert np.bincount([amazon.source[i]["label"] for i in range(62)]).tolist() == [2] * 31
  _check_labels_follow_folders(amazon)
  _check_labels_follow_folders(webcam)
  # The stored image is the file, byte for byte.
  example = amazon.source[0]
  on_disk = (office31_dir / example["file_name"].decode()).read_bytes()
  assert example["image"] == on_disk
  batch = next(pipeline.eval_batches(amazon, global_batch_size=16,
                                     preprocess=get_preprocess(**SMALL_EVAL), num_threads=0))
  assert batch["image"].shape == (16, 24, 24, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32


def test_office31_unknown_domain_lists_the_domains(office31_dir, data_dir):
  with pytest.raises(ValueError, match="amazn"):
    open_domain("office31/amazn", "train", data_dir=data_dir, manual_dir=str(office31_dir))


def test_missing_files_say_where_what_and_from_where(tmp_path):
  empty = tmp_path / "nothing_here"
  empty.mkdir()
  (empty / "README").write_text("not a dataset")
  with pytest.raises(DatasetFilesNotFoundError) as error:
    open_domain("office31/dslr", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(empty))
  message = str(error.value)
  assert f"not in {empty} (config.manual_dir) nor in its folders office31," in message
  assert "dslr/images/<class>/*.jpg" in message and "image_list/dslr.txt" in message
  assert "https://faculty.cc.gatech.edu/~judy/domainadapt/" in message
  with pytest.raises(DatasetFilesNotFoundError, match=r"(?s)absent does not exist.*Art/<class>"):
    open_domain("office_home/art", "train", data_dir=str(tmp_path / "tfds"),
                manual_dir=str(tmp_path / "absent"))
  with pytest.raises(DatasetFilesNotFoundError, match=r"(?s)train_32x32\.mat.*ufldl\.stanford"):
    open_domain("svhn", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(empty))


# ----------------------------------------------------------------------------
# PACS: the release's kfold folders, and TLlib's list (classes numbered from 1).
# ----------------------------------------------------------------------------


def test_pacs_from_kfold_folders_and_from_tllibs_list(tmp_path, data_dir):
  from tljax.data.pacs import PACS_CLASSES, PACS_DOMAINS
  root = tmp_path / "PACS"
  rng = np.random.default_rng(2)
  for domain in ("photo", "sketch"):
    for k, name in enumerate(PACS_CLASSES):
      for i in range(1 + (k % 2)):  # 1 or 2 images per class
        _save(root / "kfold" / domain / name / f"pic_{i:03d}.jpg", rng, size=(13, 9))
  # Sketch through TLlib's list: classes numbered from 1, one file left out.
  lines = [f"sketch/{name}/pic_000.jpg {k + 1}" for k, name in enumerate(PACS_CLASSES)]
  (root / "image_list").mkdir()
  (root / "image_list" / "sketch_all.txt").write_text("\n".join(lines) + "\n")
  photo = open_domain("pacs/photo", "train", data_dir=data_dir, manual_dir=str(tmp_path))
  sketch = open_domain("pacs/sketch", "train", data_dir=data_dir, manual_dir=str(root))
  assert photo.class_names == sketch.class_names == PACS_CLASSES
  assert len(photo) == 10 and len(sketch) == 7
  assert np.bincount([sketch.source[i]["label"] for i in range(7)]).tolist() == [1] * 7
  _check_labels_follow_folders(photo)
  _check_labels_follow_folders(sketch)
  example = photo.source[0]
  assert example["image"] == (root / example["file_name"].decode()).read_bytes()
  assert set(PACS_DOMAINS) == {"art_painting", "cartoon", "photo", "sketch"}
  with pytest.raises(DatasetFilesNotFoundError, match=r"(?s)kfold/cartoon/<class>.*domaingeneralization"):
    open_domain("pacs/cartoon", "train", data_dir=data_dir, manual_dir=str(tmp_path))


# ----------------------------------------------------------------------------
# Office-Home: the release's folders, "Real World" with its space.
# ----------------------------------------------------------------------------


def test_office_home_domains_share_the_65_classes(tmp_path, data_dir):
  root = tmp_path / "OfficeHomeDataset_10072016"
  rng = np.random.default_rng(1)
  for domain in ("Art", "Real World"):
    for name in OFFICE_HOME_CLASSES:
      _save(root / domain / name / "00001.jpg", rng)
  art = open_domain("office_home/art", "train", data_dir=data_dir, manual_dir=str(tmp_path))
  real = open_domain("office_home/real_world", "train", data_dir=data_dir, manual_dir=str(root))
  assert art.class_names == real.class_names == OFFICE_HOME_CLASSES
  assert len(art) == len(real) == 65
  _check_labels_follow_folders(art)
  _check_labels_follow_folders(real)


# ----------------------------------------------------------------------------
# VisDA-2017: synthetic PNGs with the release's list, real JPEGs by folder.
# ----------------------------------------------------------------------------


def test_visda2017_synthetic_and_real(tmp_path, data_dir):
  root = tmp_path / "visda2017"
  rng = np.random.default_rng(2)
  lines = []
  for label, name in enumerate(VISDA2017_CLASSES):
    for k in range(2):
      relative = f"{name}/src_1_{label:08d}_{k}.png"
      _save(root / "train" / relative, rng, fmt="PNG")
      lines.append(f"{relative} {label}")
    _save(root / "validation" / name / f"{name}_{label:06d}.jpg", rng)
  # An image on disk but not in the list is not part of the release's domain.
  _save(root / "train" / "car" / "unlisted.png", rng, fmt="PNG")
  (root / "train" / "image_list.txt").write_text("\n".join(lines) + "\n")
  synthetic = open_domain("visda2017/train", "train", data_dir=data_dir, manual_dir=str(tmp_path))
  real = open_domain("visda2017/validation", "train", data_dir=data_dir, manual_dir=str(root))
  assert synthetic.class_names == real.class_names == VISDA2017_CLASSES
  assert len(synthetic) == 24 and len(real) == 12
  assert "car/unlisted.png" not in _labels_by_file(synthetic)
  _check_labels_follow_folders(synthetic)
  _check_labels_follow_folders(real)
  assert decode_image(synthetic.source[0]["image"]).shape == (10, 14, 3)


# ----------------------------------------------------------------------------
# DomainNet: class folders and the official train/test lists.
# ----------------------------------------------------------------------------


def test_domainnet_train_and_test_from_the_official_lists(tmp_path, data_dir):
  rng = np.random.default_rng(3)
  train_lines, test_lines = [], []
  for label, name in enumerate(DOMAINNET_CLASSES):
    for k, lines in ((0, train_lines), (1, test_lines)):
      relative = f"clipart/{name}/clipart_{label:03d}_{k:06d}.jpg"
      _save(tmp_path / relative, rng, size=(6, 6))
      lines.append(f"{relative} {label}")
  (tmp_path / "clipart_train.txt").write_text("\n".join(train_lines) + "\n")
  (tmp_path / "clipart_test.txt").write_text("\n".join(test_lines[:40]) + "\n")
  train = open_domain("domainnet/clipart", "train", data_dir=data_dir, manual_dir=str(tmp_path))
  test = open_domain("domainnet/clipart", "test", data_dir=data_dir, manual_dir=str(tmp_path))
  assert train.class_names == test.class_names == DOMAINNET_CLASSES
  assert len(DOMAINNET_CLASSES) == 345 and len(train) == 345 and len(test) == 40
  # The official order, as TFDS's downloading builder has it.
  from tensorflow_datasets.image_classification.domainnet import domainnet as tfds_domainnet
  assert DOMAINNET_CLASSES == tuple(tfds_domainnet._CLASS_NAMES)  # pylint: disable=protected-access
  labels = _labels_by_file(train)
  assert sorted(labels.values()) == list(range(345))
  _check_labels_follow_folders(train)


def test_domainnet_list_that_contradicts_its_folders_is_an_error(tmp_path, data_dir):
  rng = np.random.default_rng(4)
  for name in ("airplane", "apple"):
    _save(tmp_path / "sketch" / name / "a.jpg", rng)
  (tmp_path / "sketch_train.txt").write_text("sketch/airplane/a.jpg 1\nsketch/apple/a.jpg 1\n")
  (tmp_path / "sketch_test.txt").write_text("sketch/apple/a.jpg 8\n")
  with pytest.raises(ValueError, match=r"sketch_train\.txt:2: label 1 is 'apple' here but"):
    open_domain("domainnet/sketch", "train", data_dir=data_dir, manual_dir=str(tmp_path))


# ----------------------------------------------------------------------------
# Digits: MNIST (IDX), USPS (h5 and LIBSVM), SVHN (.mat), MNIST-M (PNG + list).
# ----------------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(np.uint8).tobytes()


def test_mnist_from_the_idx_files(tmp_path, data_dir):
  rng = np.random.default_rng(5)
  root = tmp_path / "MNIST" / "raw"  # torchvision's layout
  root.mkdir(parents=True)
  expected = {}
  for prefix, n in (("train", 20), ("t10k", 10)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    expected[prefix] = (images, labels)
    (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))  # not gzipped
  for split, prefix in (("train", "train"), ("test", "t10k")):
    domain = open_domain("mnist", split, data_dir=data_dir, manual_dir=str(tmp_path), cache=True)
    assert domain.class_names == DIGIT_CLASSES
    got = sorted((int(domain.source[i]["label"]), domain.source[i]["image"].tobytes())
                 for i in range(len(domain)))
    images, labels = expected[prefix]
    assert got == sorted((int(l), im[..., None].tobytes()) for im, l in zip(images, labels))
  out = get_preprocess("digits32")(domain.source[0], np.random.default_rng(0))
  assert out["image"].shape == (32, 32, 3)


def test_usps_h5_and_libsvm_files_agree(tmp_path, data_dir):
  import h5py

  rng = np.random.default_rng(6)
  splits = {s: (rng.integers(0, 256, (n, 256)) / 255.0, np.arange(n) % 10)
            for s, n in (("train", 12), ("test", 7))}
  h5_root, libsvm_root = tmp_path / "h5" / "usps", tmp_path / "libsvm"
  h5_root.mkdir(parents=True)
  libsvm_root.mkdir()
  with h5py.File(h5_root / "usps.h5", "w") as f:
    for split, (data, target) in splits.items():
      f.create_dataset(f"{split}/data", data=data)
      f.create_dataset(f"{split}/target", data=target)
  for split, name in (("train", "usps.bz2"), ("test", "usps.t.bz2")):
    data, target = splits[split]
    text = "".join(f"{t + 1} " + " ".join(f"{i + 1}:{2 * v - 1:.6f}" for i, v in enumerate(row))
                   + "\n" for row, t in zip(data, target))
    (libsvm_root / name).write_bytes(bz2.compress(text.encode()))
  for split, (data, target) in splits.items():
    from_h5 = open_domain("usps", split, data_dir=str(tmp_path / "a"),
                          manual_dir=str(h5_root.parent), cache=True)
    from_libsvm = open_domain("usps", split, data_dir=str(tmp_path / "b"),
                              manual_dir=str(libsvm_root), cache=True)
    for domain in (from_h5, from_libsvm):
      assert len(domain) == len(target) and domain.class_names == DIGIT_CLASSES
      pairs = sorted((int(domain.source[i]["label"]), domain.source[i]["image"].tobytes())
                     for i in range(len(domain)))
      want = sorted((int(t), np.round(row * 255).astype(np.uint8).reshape(16, 16, 1).tobytes())
                    for row, t in zip(data, target))
      assert pairs == want
  out = get_preprocess("digits28")(from_h5.source[0], np.random.default_rng(0))
  assert out["image"].shape == (28, 28, 3)


def test_svhn_maps_label_10_to_digit_0(tmp_path, data_dir):
  import scipy.io

  rng = np.random.default_rng(7)
  for split, n in (("train", 15), ("test", 5)):
    images = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    labels = (np.arange(n) % 10 + 1).reshape(-1, 1)  # 1..10, 10 meaning 0
    scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": images, "y": labels})
  train = open_domain("svhn", "train", data_dir=data_dir, manual_dir=str(tmp_path), cache=True)
  labels = sorted(int(train.source[i]["label"]) for i in range(len(train)))
  assert labels == sorted(list(range(10)) + list(range(1, 6)))
  assert train.source[0]["image"].shape == (32, 32, 3)
  assert len(open_domain("svhn", "test", data_dir=data_dir, manual_dir=str(tmp_path))) == 5


def test_mnist_m_from_png_files_and_label_lists(tmp_path, data_dir):
  rng = np.random.default_rng(8)
  root = tmp_path / "mnist_m"
  for split, n in (("train", 20), ("test", 10)):
    lines = []
    for i in range(n):
      _save(root / f"mnist_m_{split}" / f"{i:08d}.png", rng, size=(28, 28), fmt="PNG")
      lines.append(f"{i:08d}.png {i % 10}")
    (root / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines) + "\n")
  train = open_domain("mnist_m", "train", data_dir=data_dir, manual_dir=str(tmp_path))
  assert len(train) == 20 and train.class_names == DIGIT_CLASSES
  example = train.source[0]
  assert example["image"].shape == (28, 28, 3)
  name = example["file_name"].decode()
  stored = np.asarray(PIL.Image.open(root / name))
  np.testing.assert_array_equal(example["image"], stored)
  assert example["label"] == int(pathlib.Path(name).stem) % 10


# ----------------------------------------------------------------------------
# Custom data: image_folder:PATH and image_list:PATH.
# ----------------------------------------------------------------------------


def test_image_folder_relative_to_manual_dir_and_rebuilt_when_files_change(tmp_path, data_dir):
  rng = np.random.default_rng(9)
  root = tmp_path / "shop photos"
  for name, count in (("mug", 3), ("chair", 2), ("lamp", 1)):
    for k in range(count):
      _save(root / name / "sub" / f"{k}.jpg", rng)
  (root / "notes.txt").write_text("not an image")
  domain = open_domain("image_folder:shop photos", "train", data_dir=data_dir,
                       manual_dir=str(tmp_path))
  assert domain.class_names == ("chair", "lamp", "mug") and len(domain) == 6
  _check_labels_follow_folders(domain, part=0)
  # Worker processes receive the source pickled.
  copy = pickle.loads(pickle.dumps(domain.source))
  assert copy[0]["image"] == domain.source[0]["image"]
  _save(root / "lamp" / "new.png", rng, fmt="PNG")
  assert len(open_domain(f"image_folder:{root}", "train", data_dir=data_dir)) == 7
  # A held-out part by TFDS slicing.
  assert len(open_domain(f"image_folder:{root}", "train[:50%]", data_dir=data_dir)) < 7


def test_image_folder_classes_file_fixes_the_label_space(tmp_path, data_dir):
  rng = np.random.default_rng(10)
  (tmp_path / "classes.txt").write_text("dog\ncat\ncow\n")
  _save(tmp_path / "cat" / "a.jpg", rng)
  _save(tmp_path / "dog" / "b.jpg", rng)
  domain = open_domain(f"image_folder:{tmp_path}", "train", data_dir=data_dir)
  assert domain.class_names == ("dog", "cat", "cow")
  _check_labels_follow_folders(domain)


def test_image_list_numeric_and_named_classes(tmp_path, data_dir):
  rng = np.random.default_rng(11)
  root = tmp_path / "mydata"
  for name in ("a", "b", "c"):
    _save(root / "imgs" / f"{name}.jpg", rng)
  (root / "image_list").mkdir()
  list_file = root / "image_list" / "domain one.txt"  # TLlib's layout: paths from <root>
  list_file.write_text("imgs/a.jpg 2\nimgs/b.jpg 0\nimgs/c.jpg 2\n")
  numeric = open_domain(f"image_list:{list_file}", "train", data_dir=data_dir)
  assert numeric.class_names == ("0", "1", "2") and len(numeric) == 3
  labels = _labels_by_file(numeric)
  assert labels == {"imgs/a.jpg": 2, "imgs/b.jpg": 0, "imgs/c.jpg": 2}
  (root / "classes.txt").write_text("zero\none\ntwo\n")
  named = open_domain("image_list:image_list/domain one.txt", "train", data_dir=data_dir,
                      manual_dir=str(root))
  assert named.class_names == ("zero", "one", "two")


def test_custom_data_without_a_path_or_files_is_an_error(tmp_path, data_dir):
  with pytest.raises(ValueError, match="image_folder:/data/my_domain"):
    open_domain("image_folder", "train", data_dir=data_dir)
  with pytest.raises(DatasetFilesNotFoundError, match="is not a directory"):
    open_domain(f"image_folder:{tmp_path / 'nope'}", "train", data_dir=data_dir)
  with pytest.raises(DatasetFilesNotFoundError, match="is not a file"):
    open_domain(f"image_list:{tmp_path / 'nope.txt'}", "train", data_dir=data_dir)


def test_a_split_the_dataset_lacks_names_the_splits_it_has(tmp_path, caplog):
  rng = np.random.default_rng(15)
  for name in ("cat", "dog"):
    for k in range(5):
      _save(tmp_path / "photos" / name / f"{k}.jpg", rng)
  name, data_dir = f"image_folder:{tmp_path / 'photos'}", str(tmp_path / "tfds")
  caplog.set_level(logging.INFO)
  assert available_splits(name, data_dir=data_dir) == ("train",)
  assert "Building" in caplog.text
  caplog.clear()
  for split in ("test", "train[:50%]+test", "test[80%:]"):
    with pytest.raises(ValueError) as error:
      open_domain(name, split, data_dir=data_dir)
    message = str(error.value)
    assert "\n" not in message
    assert f"{name!r} has no split 'test'" in message and "its splits are: train" in message
    assert "--config.eval_target_split=train" in message
  # Slices and the `all` split of the splits it has still work; nothing was built again.
  assert len(open_domain(name, "train[80%:]", data_dir=data_dir)) == 2
  assert len(open_domain(name, "train[:80%]", data_dir=data_dir)) == 8
  assert len(open_domain(name, "all", data_dir=data_dir)) == 10
  assert "Building" not in caplog.text


def test_data_dir_that_is_a_file_is_one_error(tmp_path):
  rng = np.random.default_rng(16)
  _save(tmp_path / "photos" / "cat" / "0.jpg", rng)
  a_file = tmp_path / "tfds.txt"
  a_file.write_text("not a directory")
  for data_dir in (a_file, a_file / "inside"):
    with pytest.raises(ValueError) as error:
      open_domain(f"image_folder:{tmp_path / 'photos'}", "train", data_dir=str(data_dir))
    message = str(error.value)
    assert str(data_dir) in message and f"{a_file} is a file" in message
    assert "--config.data_dir" in message and "\n" not in message
  with pytest.raises(ValueError, match="is a file"):
    available_splits("digits", data_dir=str(a_file))


# ----------------------------------------------------------------------------
# Unreadable images; images that need converting.
# ----------------------------------------------------------------------------


def _folder_with_bad_images(root: pathlib.Path) -> list[str]:
  rng = np.random.default_rng(12)
  for k in range(3):
    _save(root / "good" / f"{k}.jpg", rng, size=(64, 64))
  truncated = io.BytesIO()
  PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated, "JPEG")
  (root / "bad").mkdir()
  (root / "bad" / "truncated.jpg").write_bytes(truncated.getvalue()[:-600])
  (root / "bad" / "not_an_image.jpg").write_text("<html>404</html>")
  _save(root / "bad" / "fine.jpg", rng)
  return [str(root / "bad" / "not_an_image.jpg"), str(root / "bad" / "truncated.jpg")]


def test_corrupt_image_names_the_file_or_is_skipped_on_request(tmp_path, caplog):
  bad = _folder_with_bad_images(tmp_path / "photos")
  with pytest.raises(UnreadableImageError) as error:
    open_domain(f"image_folder:{tmp_path / 'photos'}", "train", data_dir=str(tmp_path / "a"))
  assert error.value.path in bad and error.value.path in str(error.value)
  assert "--config.data.skip_corrupt=True" in str(error.value)
  assert "\n" not in str(error.value)
  caplog.set_level(logging.WARNING)
  domain = open_domain(f"image_folder:{tmp_path / 'photos'}", "train",
                       data_dir=str(tmp_path / "b"), skip_corrupt=True)
  assert len(domain) == 4
  assert "skipped 2 unreadable image(s) of 6" in caplog.text
  assert all(path in caplog.text for path in bad)


def test_grey_cmyk_and_palette_images_become_rgb(tmp_path, data_dir):
  rng = np.random.default_rng(13)
  _save(tmp_path / "x" / "grey.jpg", rng, mode="L")
  _save(tmp_path / "x" / "cmyk.jpg", rng, mode="CMYK")
  _save(tmp_path / "x" / "palette.png", rng, mode="P", fmt="PNG")
  _save(tmp_path / "x" / "alpha.png", rng, mode="RGBA", fmt="PNG")
  _save(tmp_path / "x" / "bitmap.bmp", rng, fmt="BMP")
  domain = open_domain(f"image_folder:{tmp_path}", "train", data_dir=data_dir)
  assert len(domain) == 5
  for i in range(5):
    image = domain.source[i]["image"]
    assert PIL.Image.open(io.BytesIO(image)).mode == "RGB"
    assert decode_image(image).shape == (10, 14, 3)


# Every mode PIL opens, written as a file and the RGB pixels expected of it
# (see tljax.data.image_modes for the rules). Each function returns
# (file name, file bytes, expected uint8 (H, W, 3)).
_H, _W = 6, 9


def _encode(image, fmt, **kwargs) -> bytes:
  out = io.BytesIO()
  image.save(out, format=fmt, **kwargs)
  return out.getvalue()


def _grey(values) -> np.ndarray:
  return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=-1)


def _from_16_bit(values) -> np.ndarray:
  # x / 65535 * 255 rounded (never a tie for integers).
  return np.round(np.asarray(values, np.float64) / 65535 * 255).astype(np.uint8)


def _samples_16_bit(rng, shape):
  """16-bit samples with the extremes, mid-scale and values that clipping would saturate."""
  values = rng.integers(0, 65536, shape)
  values.flat[:5] = [0, 65535, 32768, 257, 300]
  return values


def _mode_rgb(rng):
  pixels = rng.integers(0, 256, (_H, _W, 3), dtype=np.uint8)
  return "rgb.png", _encode(PIL.Image.fromarray(pixels), "PNG"), pixels


def _mode_rgb_bmp(rng):
  pixels = rng.integers(0, 256, (_H, _W, 3), dtype=np.uint8)
  return "rgb.bmp", _encode(PIL.Image.fromarray(pixels), "BMP"), pixels


def _mode_l(rng):
  grey = rng.integers(0, 256, (_H, _W), dtype=np.uint8)
  return "grey.png", _encode(PIL.Image.fromarray(grey), "PNG"), _grey(grey)


def _mode_la(rng):
  pixels = rng.integers(0, 256, (_H, _W, 2), dtype=np.uint8)
  return "grey_alpha.png", _encode(PIL.Image.fromarray(pixels, "LA"), "PNG"), _grey(pixels[..., 0])


def _mode_1(rng):
  bits = rng.integers(0, 2, (_H, _W)).astype(bool)
  return "bilevel.png", _encode(PIL.Image.fromarray(bits), "PNG"), _grey(bits * 255)


def _palette(rng):
  colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
  indices = rng.integers(0, 16, (_H, _W), dtype=np.uint8)
  image = PIL.Image.fromarray(indices, "L").convert("P")
  image.putpalette(colours.tobytes())
  return image, colours[indices]


def _mode_p(rng):
  image, expected = _palette(rng)
  return "palette.png", _encode(image, "PNG"), expected


def _mode_p_transparent_index(rng):
  image, expected = _palette(rng)
  return "palette_index.gif", _encode(image, "GIF", transparency=3), expected


def _mode_p_alpha_per_entry(rng):
  image, expected = _palette(rng)
  alphas = bytes(rng.integers(0, 256, 16, dtype=np.uint8))
  return "palette_alpha.png", _encode(image, "PNG", transparency=alphas), expected


def _mode_rgba(rng):
  pixels = rng.integers(0, 256, (_H, _W, 4), dtype=np.uint8)
  pixels[0, :, 3] = 0  # fully transparent: the colour is kept (alpha dropped)
  return "alpha.png", _encode(PIL.Image.fromarray(pixels), "PNG"), pixels[..., :3]


def _mode_cmyk(rng):
  cmyk = rng.integers(0, 256, (_H, _W, 4)).astype(np.uint8)
  ink = (255 - cmyk[..., :3].astype(np.float64)) * (255 - cmyk[..., 3:].astype(np.float64))
  expected = np.round(ink / 255).astype(np.uint8)
  return "cmyk.tif", _encode(PIL.Image.fromarray(cmyk, "CMYK"), "TIFF"), expected


def _mode_i16_png(rng):
  values = _samples_16_bit(rng, (_H, _W))
  image = PIL.Image.fromarray(values.astype(np.uint16))
  return "grey16.png", _encode(image, "PNG"), _grey(_from_16_bit(values))


def _mode_i16b_tiff(rng):
  values = _samples_16_bit(rng, (_H, _W))
  image = PIL.Image.frombytes("I;16B", (_W, _H), values.astype(">u2").tobytes())
  return "grey16b.tif", _encode(image, "TIFF"), _grey(_from_16_bit(values))


def _mode_i_pgm(rng):
  # PIL opens 16-bit PGMs as mode I.
  values = _samples_16_bit(rng, (_H, _W))
  data = f"P5\n{_W} {_H}\n65535\n".encode() + values.astype(">u2").tobytes()
  return "grey16.pgm", data, _grey(_from_16_bit(values))


def _mode_i32_tiff(rng):
  values = rng.integers(-1000, 70000, (_H, _W)).astype(np.int32)
  values.flat[:3] = [-5, 65535, 1 << 30]
  expected = _grey(_from_16_bit(np.clip(values, 0, 65535)))
  return "int32.tif", _encode(PIL.Image.fromarray(values), "TIFF"), expected


def _mode_f_tiff(rng):
  values = rng.uniform(-0.2, 1.2, (_H, _W)).astype(np.float32)
  values.flat[:4] = [0.0, 1.0, 0.5, np.nan]
  expected = np.round(np.clip(np.nan_to_num(values.astype(np.float64)), 0, 1) * 255)
  return "float.tif", _encode(PIL.Image.fromarray(values), "TIFF"), _grey(expected)


def _png_16_bit(samples: np.ndarray) -> bytes:
  # PIL writes no 16-bit colour PNGs; TensorFlow (libpng) does.
  import tensorflow as tf
  return tf.io.encode_png(samples.astype(np.uint16)).numpy()


def _mode_rgb16_png(rng):
  values = _samples_16_bit(rng, (_H, _W, 3))
  return "rgb16.png", _png_16_bit(values), _from_16_bit(values)


def _mode_rgba16_png(rng):
  values = _samples_16_bit(rng, (_H, _W, 4))
  return "rgba16.png", _png_16_bit(values), _from_16_bit(values[..., :3])


def _mode_la16_png(rng):
  values = _samples_16_bit(rng, (_H, _W, 2))
  return "grey_alpha16.png", _png_16_bit(values), _grey(_from_16_bit(values[..., 0]))


_IMAGE_MODES = [_mode_rgb, _mode_rgb_bmp, _mode_l, _mode_la, _mode_1, _mode_p,
                _mode_p_transparent_index, _mode_p_alpha_per_entry, _mode_rgba, _mode_cmyk,
                _mode_i16_png, _mode_i16b_tiff, _mode_i_pgm, _mode_i32_tiff, _mode_f_tiff,
                _mode_rgb16_png, _mode_rgba16_png, _mode_la16_png]


@pytest.mark.parametrize("make", _IMAGE_MODES, ids=lambda f: f.__name__[len("_mode_"):])
def test_every_image_mode_becomes_8_bit_rgb_by_its_rule(make, tmp_path):
  name, data, expected = make(np.random.default_rng(17))
  path = tmp_path / name
  path.write_bytes(data)
  # Decoding the file (preprocessing) and storing it (building) agree pixel for pixel.
  np.testing.assert_array_equal(decode_image(data), expected)
  stored = load_checked(str(path))
  assert PIL.Image.open(io.BytesIO(stored)).mode == "RGB"
  np.testing.assert_array_equal(decode_image(stored), expected)
  if name.endswith(".png") and PIL.Image.open(path).mode == "RGB" and "16" not in name:
    assert stored == data  # 8-bit RGB PNGs are stored byte for byte


def test_image_folder_stores_a_16_bit_png_scaled_not_white(tmp_path, data_dir):
  rng = np.random.default_rng(18)
  values = np.tile(np.linspace(0, 65535, 12).astype(np.uint16), (5, 1))
  (tmp_path / "scans" / "a").mkdir(parents=True)
  PIL.Image.fromarray(values).save(tmp_path / "scans" / "a" / "scan.png")
  _save(tmp_path / "scans" / "b" / "photo.jpg", rng)
  domain = open_domain(f"image_folder:{tmp_path / 'scans'}", "train", data_dir=data_dir)
  example = next(domain.source[i] for i in range(2) if domain.source[i]["label"] == 0)
  np.testing.assert_array_equal(decode_image(example["image"]), _grey(_from_16_bit(values)))


# ----------------------------------------------------------------------------
# Through the pipeline: determinism, lossless evaluation, process shards.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def amazon(office31_dir, data_dir):
  return open_domain("office31/amazon", "train", data_dir=data_dir, manual_dir=str(office31_dir))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("cache", [False, True])
def test_training_batches_are_a_function_of_the_seed(amazon, cache, office31_dir, data_dir):
  domain = amazon if not cache else open_domain(
      "office31/amazon", "train", data_dir=data_dir, manual_dir=str(office31_dir), cache=True)
  pp = get_preprocess(**SMALL_TRAIN)
  a = _take(pipeline.train_batches(domain, global_batch_size=8, preprocess=pp, seed=5,
                                   num_threads=2), 9)
  b = _take(pipeline.train_batches(domain, global_batch_size=8, preprocess=pp, seed=5,
                                   num_threads=0), 9)
  c = _take(pipeline.train_batches(domain, global_batch_size=8, preprocess=pp, seed=6), 9)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not all(np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))
  # 9 batches of 8 = one epoch of 62 and the start of the next: each epoch is a permutation.
  labels = np.concatenate([x["label"] for x in a])
  assert np.bincount(labels[:62], minlength=31).tolist() == [2] * 31


def test_worker_processes_give_the_same_batches(amazon):
  pp = get_preprocess(**SMALL_TRAIN)
  threads = _take(pipeline.train_batches(amazon, global_batch_size=8, preprocess=pp, seed=1,
                                         start_step=3), 3)
  workers = pipeline.train_batches(amazon, global_batch_size=8, preprocess=pp, seed=1,
                                   start_step=3, num_workers=2)
  for x, y in zip(threads, _take(workers, 3)):
    np.testing.assert_array_equal(x["image"], y["image"])
  workers.close()


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_evaluation_sees_every_example_once(amazon, process_count):
  pp = get_preprocess(**SMALL_EVAL)
  seen = []
  for p in range(process_count):
    for batch in pipeline.eval_batches(amazon, global_batch_size=16, preprocess=pp,
                                       process_index=p, process_count=process_count):
      seen += batch["index"][batch["mask"] == 1].tolist()
  assert sorted(seen) == list(range(len(amazon)))


def test_process_shards_are_disjoint_and_complete(amazon):
  pp = get_preprocess(**SMALL_TRAIN)
  full = _take(pipeline.train_batches(amazon, global_batch_size=8, preprocess=pp, seed=2), 2)
  shards = [_take(pipeline.train_batches(amazon, global_batch_size=8, preprocess=pp, seed=2,
                                         process_index=p, process_count=2), 2) for p in range(2)]
  for step in range(2):
    parts = [shards[p][step]["image"] for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), full[step]["image"])
    assert not any(np.array_equal(x, y) for x in parts[0] for y in parts[1])


# ----------------------------------------------------------------------------
# Different label spaces stop training.
# ----------------------------------------------------------------------------


def test_source_and_target_with_different_classes_stop_training(tmp_path, data_dir):
  import jax
  from conftest import tiny_config
  from tljax import train

  rng = np.random.default_rng(14)
  for domain, classes in (("a", ("cat", "dog")), ("b", ("cat", "cow"))):
    for name in classes:
      _save(tmp_path / domain / name / "0.jpg", rng)
  config = tiny_config(data_dir, source=f"image_folder:{tmp_path / 'a'}",
                       target=f"image_folder:{tmp_path / 'b'}", eval_source_split="train",
                       eval_target_split="train")
  with pytest.raises(ValueError, match="different classes"):
    train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])



# ----------------------------------------------------------------------------
# Preprocessing presets.
# ----------------------------------------------------------------------------


def _photo_jpeg(width=500, height=400, quality=90) -> bytes:
  import skimage.data

  photo = PIL.Image.fromarray(skimage.data.astronaut()).resize((width, height))
  out = io.BytesIO()
  photo.save(out, format="JPEG", quality=quality)
  return out.getvalue()


@pytest.mark.parametrize("name,kwargs", [
    ("imagenet_train", {}), ("imagenet_train", {"crop": "random", "size": 64, "resize": 72}),
    ("imagenet_train", {"resize": None, "size": 96}),
    ("imagenet_train", {"resize_mode": "shorter_side", "size": 32, "resize": 40}),
    ("vit_train", {"size": 48, "resize": 56})])
def test_training_presets_are_seeded_by_the_rng(name, kwargs):
  pp = get_preprocess(name, **kwargs)
  example = {"image": _photo_jpeg(), "label": 7}
  size = kwargs.get("size", 224)
  first = pp(example, np.random.default_rng((0, 1)))
  assert first["image"].shape == (size, size, 3) and first["image"].dtype == np.float32
  assert first["label"] == 7 and first["label"].dtype == np.int32
  np.testing.assert_array_equal(first["image"], pp(example, np.random.default_rng((0, 1)))["image"])
  others = [pp(example, np.random.default_rng((0, k)))["image"] for k in range(2, 8)]
  assert len({o.tobytes() for o in [first["image"], *others]}) >= 5  # (two may coincide)


def test_eval_preset_is_the_centre_of_the_square_resize():
  data = _photo_jpeg()
  pp = get_preprocess("imagenet_eval")
  out = pp({"image": data, "label": 0}, None)["image"]
  # TLlib: ResizeImage(256) then CenterCrop(224), normalised; here fused into one resample
  # (and a DCT-scaled decode), which may differ by a few grey levels.
  reference = PIL.Image.open(io.BytesIO(data)).convert("RGB").resize((256, 256), PIL.Image.BILINEAR)
  reference = np.asarray(reference.crop((16, 16, 240, 240)), np.float32) / 255.0
  reference = (reference - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  assert np.abs(out - reference).mean() < 0.03
  assert np.array_equal(out, pp({"image": data, "label": 0}, np.random.default_rng(3))["image"])


def test_vit_preset_scales_to_minus_one_one_and_presets_take_arrays():
  grey = np.full((40, 30, 1), 255, np.uint8)
  out = get_preprocess("vit_eval", size=16, resize=20)({"image": grey, "label": 0}, None)
  np.testing.assert_allclose(out["image"], 1.0)
  black = np.zeros((40, 30, 3), np.uint8)
  out = get_preprocess("vit_train", size=16, resize=20)({"image": black, "label": 0},
                                                        np.random.default_rng(0))
  np.testing.assert_allclose(out["image"], -1.0)


def test_small_digit_presets_resize_and_make_rgb():
  usps = np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 1, 1))
  out = get_preprocess("digits28")({"image": usps, "label": 3}, np.random.default_rng(0))
  assert out["image"].shape == (28, 28, 3)
  np.testing.assert_array_equal(out["image"][..., 0], out["image"][..., 2])
  assert out["image"].min() >= -1.0 and out["image"].max() <= 1.0
  svhn = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  grey = get_preprocess("digits_resized", size=32, channels=1)({"image": svhn, "label": 1}, None)
  assert grey["image"].shape == (32, 32, 1)
  shifted = get_preprocess("digits32", random_shift=2)
  a = shifted({"image": svhn, "label": 1}, np.random.default_rng(1))["image"]
  np.testing.assert_array_equal(a, shifted({"image": svhn, "label": 1},
                                           np.random.default_rng(1))["image"])


# ----------------------------------------------------------------------------
# Every preset on what image-file builders store: encoded files of any size.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory, data_dir):
  """An image folder of PNG and JPEG files of different sizes and modes."""
  root = tmp_path_factory.mktemp("mixed")
  rng = np.random.default_rng(19)
  _save(root / "a" / "0.png", rng, size=(12, 16), fmt="PNG")
  _save(root / "a" / "1.jpg", rng, size=(20, 10))
  _save(root / "b" / "2.png", rng, size=(9, 9), fmt="PNG", mode="L")
  _save(root / "b" / "3.jpg", rng, size=(31, 17), mode="L")
  PIL.Image.fromarray(rng.integers(0, 65536, (14, 14)).astype(np.uint16)).save(root / "b" / "4.png")
  return open_domain(f"image_folder:{root}", "train", data_dir=data_dir)


@pytest.mark.parametrize("config,shape", [
    ({"name": "none"}, None), ({"name": "digits"}, None),
    ({"name": "digits", "random_shift": 2}, None),
    ({"name": "digits28"}, (28, 28, 3)), ({"name": "digits32"}, (32, 32, 3)),
    ({"name": "digits_resized", "size": 20, "channels": 1}, (20, 20, 1)),
    (SMALL_TRAIN, (24, 24, 3)), (SMALL_EVAL, (24, 24, 3)),
    ({"name": "vit_train", "size": 16, "resize": 20}, (16, 16, 3)),
    ({"name": "vit_eval", "size": 16, "resize": 20}, (16, 16, 3))])
def test_every_preset_takes_encoded_files_and_arrays(mixed_sizes, config, shape):
  pp = get_preprocess(**config)
  for i in range(len(mixed_sizes)):
    example = mixed_sizes.source[i]
    rgb = decode_image(example["image"])
    want = shape or rgb.shape  # presets without a size keep the stored one
    from_file = pp(example, np.random.default_rng(i))
    from_array = pp({"image": rgb, "label": example["label"]}, np.random.default_rng(i))
    assert from_file["image"].shape == want and from_file["image"].dtype == np.float32
    assert from_file["label"] == example["label"]
    np.testing.assert_array_equal(from_file["image"], from_array["image"])
  if config["name"] == "none":
    np.testing.assert_array_equal(from_file["image"], rgb)


@pytest.mark.parametrize("name", ["digits", "none"])
def test_presets_that_keep_the_size_say_how_to_resize_mixed_sizes(mixed_sizes, name):
  batches = pipeline.eval_batches(mixed_sizes, global_batch_size=4,
                                  preprocess=get_preprocess(name), num_threads=0)
  with pytest.raises(ValueError) as error:
    next(batches)
  message = str(error.value)
  assert "different shapes in one batch" in message and "\n" not in message
  assert "--config.data.train_preprocess.name=digits_resized" in message
  batch = next(pipeline.eval_batches(mixed_sizes, global_batch_size=4,
                                     preprocess=get_preprocess("digits_resized"), num_threads=0))
  assert batch["image"].shape == (4, 32, 32, 3)


def test_concurrent_first_builds_of_one_dataset_both_succeed(tmp_path, digits_data_dir):
  """Two processes that open the same unbuilt dataset at once (a sweep's
  parallel runs) both get it: the second waits for the first's build."""
  import subprocess
  import sys

  script = ("import sys; from tljax.data import open_domain; "
            "d = open_domain('digits', 'test', data_dir=sys.argv[1]); print(len(d))")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-2000:]
  sizes = {out.strip().splitlines()[-1] for out, _ in outputs}
  # Both see the split that a build on its own (the session's) makes.
  assert sizes == {str(len(open_domain("digits", "test", data_dir=digits_data_dir)))}
