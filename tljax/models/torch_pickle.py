"""PyTorch's `torch.save` files read without PyTorch, weights only.

A `.pth` / `.pt` file is a pickle whose tensors point at raw storages: in
the zip format (PyTorch >= 1.6) each storage is a member `<name>/data/<key>`
of the archive beside the pickle `<name>/data.pkl`; in the legacy format
(what torchvision's older ImageNet weights use) the storages follow the
pickle in the same stream, each as its element count and its bytes. This
module unpickles with an allow-list (`ALLOWED`: the state dict's
`OrderedDict`, tensor and parameter rebuilding, the storage types) and
builds numpy arrays; any other global, such as a call that would run code,
is refused with `pickle.UnpicklingError` (the rule of
`torch.load(weights_only=True)`). Where it sits: `checkpoints.read` calls
`read_state` for `.pth` files.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

# torch.save's storage types (their pickled names) and the arrays they hold.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# The legacy format's header: its magic number and protocol version.
_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


class RefusedGlobal(pickle.UnpicklingError):
  """The file names a global outside `ALLOWED` (it may run code)."""


class _Storage:
  """One storage's elements, a flat array (in the legacy format filled after
  unpickling: the tensors built from it are views of it until then)."""

  def __init__(self, array: np.ndarray):
    self.array = array


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *unused):
  """A tensor as a view of its storage: `torch._utils._rebuild_tensor(_v2)`."""
  del unused  # requires_grad, backward hooks, metadata
  flat = storage.array
  if not size:
    return flat[offset:offset + 1].reshape(())
  return np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                         strides=tuple(s * flat.itemsize for s in stride),
                                         writeable=False)


def _rebuild_parameter(data, *unused):
  del unused  # requires_grad, backward hooks
  return data


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    # Storage types appear only in persistent ids, for their element type.
    **{("torch", name): type(name, (), {"dtype": dtype}) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
  """The allow-listed unpickler; `storage(pid)` resolves persistent ids."""

  def __init__(self, file: BinaryIO, storage):
    super().__init__(file)
    self._storage = storage

  def find_class(self, module: str, name: str) -> Any:
    try:
      return ALLOWED[module, name]
    except KeyError:
      raise RefusedGlobal(
          f"unsupported global {module}.{name}: not part of a weights file") from None

  def persistent_load(self, pid: Any) -> Any:
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    return self._storage(pid)


def _load_zip(file: BinaryIO) -> Any:
  with zipfile.ZipFile(file) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"a zip archive without one data.pkl (it holds {names[:4]})")
    prefix = pickles[0][:-len("data.pkl")]
    storages: dict[str, _Storage] = {}

    def storage(pid):
      _, storage_type, key, _, numel = pid[:5]
      if key not in storages:
        dtype = np.dtype(storage_type.dtype)
        data = archive.read(f"{prefix}data/{key}")
        if len(data) != numel * dtype.itemsize:
          raise ValueError(f"storage {key} holds {len(data)} bytes, not {numel} elements")
        storages[key] = _Storage(np.frombuffer(data, dtype))
      return storages[key]

    with archive.open(pickles[0]) as data_pkl:
      return _Unpickler(io.BytesIO(data_pkl.read()), storage).load()


def _load_legacy(file: BinaryIO) -> Any:
  def header():
    return _Unpickler(file, lambda pid: None).load()

  if header() != _LEGACY_MAGIC or header() != _LEGACY_PROTOCOL:
    raise ValueError("a pickle, but not one torch.save wrote")
  header()  # system information (endianness, type sizes)
  storages: dict[str, _Storage] = {}

  def storage(pid):
    _, storage_type, key, _, numel, view = pid[:6]
    if key not in storages:
      storages[key] = _Storage(np.empty((numel,), storage_type.dtype))
    if view is not None:
      raise pickle.UnpicklingError("storage views (PyTorch < 0.4 files) are not supported")
    return storages[key]

  state = _Unpickler(file, storage).load()
  for key in _Unpickler(file, lambda pid: None).load():
    target = storages[key].array
    (count,) = struct.unpack("<q", file.read(8))
    data = file.read(count * target.itemsize)
    if count != target.size or len(data) != target.nbytes:
      raise ValueError(f"storage {key} ends early or does not match its tensors")
    target[:] = np.frombuffer(data, target.dtype)
  return state


def read_state(path: str) -> Any:
  """The object `torch.save` wrote to `path`, its tensors as numpy arrays
  (bfloat16 ones as float32, which numpy computes with).

  Raises:
    RefusedGlobal: the file names a global that is not part of a weights
      file (it may contain code).
    ValueError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ...: a
      damaged file.
  """
  with open(path, "rb") as file:
    # The zip format by its first bytes, not its directory: a cut archive has none.
    zipped = file.read(2) == b"PK"
    file.seek(0)
    state = _load_zip(file) if zipped else _load_legacy(file)

  def owned(value):
    if isinstance(value, np.ndarray):
      return np.array(value, np.float32 if value.dtype == ml_dtypes.bfloat16 else value.dtype)
    if isinstance(value, dict):
      return type(value)((k, owned(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
      return type(value)(owned(v) for v in value)
    return value

  return owned(state)
