"""Test session setup: 8 simulated CPU devices, no network, no GPU.

The flag must be set before jax is imported anywhere, which is why it lives
here. Tests that need a single device build a mesh over `jax.devices()[:1]`.
"""

import contextlib
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Compiled programs are kept on disk and shared by every test process and the
# runs the tests start (`python -m tljax.main` inherits these variables): the
# tests compile the same small networks' steps many times over, and most of a
# short test run is compilation. Set TLJAX_TEST_JAX_CACHE= (empty) to turn it off.
# Every program is kept, however fast it compiled: a short run also compiles
# some fifty small ones (evaluation, validators, eager operations), and
# reading them back is faster than compiling them again (measured once, the
# short runs of test_methods.py from an empty cache: 160 s, against 170 s with
# a 0.2 s floor).
_CACHE = os.environ.get("TLJAX_TEST_JAX_CACHE",
                        os.path.join(tempfile.gettempdir(), f"tljax_tests_jax_cache_{os.getuid()}"))
if _CACHE:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The reference models (torchvision, timm) load triton, whose native library
# crashes the process when TensorFlow (which TFDS imports) was loaded first; in
# the other order both work. Tests run in shared processes, so load them first.
try:
  import timm  # noqa: F401,E402  pylint: disable=unused-import
  import torchvision  # noqa: F401,E402  pylint: disable=unused-import
except ImportError:
  pass

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def pytest_sessionfinish(session):
  """`TLJAX_PARITY_TABLE=path.md`: the trajectory parity table of the cases
  this session ran (`test_trajectory.write_table`, which says what to run
  when some of its files were not)."""
  path = os.environ.get("TLJAX_PARITY_TABLE")
  module = sys.modules.get("test_trajectory")
  if path and module is not None:
    module.write_table(path)
# The methods whose runs `test_new_methods.py` checks end to end (finite, resumed
# bit for bit, one device = two).
NEW_METHODS = ["adda", "mcd", "bnm", "dsan", "pseudo_label", "mean_teacher", "fixmatch", "shot",
               "pada", "iwan", "osbp", "uan"]
# The methods of other settings, whose runs their own files check on their
# embedded tasks (`test_dg.py`, `test_ssl.py`).
DG_METHODS = ["irm", "vrex", "groupdro", "coral_dg", "mldg", "mixstyle"]
MULTI_SOURCE_METHODS = ["m3sda", "mfsan"]
SSL_METHODS = ["pi_model", "uda", "flexmatch", "debiasmatch", "dst", "self_tuning", "mean_teacher"]


@contextlib.contextmanager
def parity_settings(cache_dir: str):
  """What the trajectory parity files run under (test_trajectory.py and the
  files of its `PARITY_FILES`): float64, set globally rather than by
  `jax.enable_x64` (thread-local: the host callbacks that bring draws and
  masks out of a compiled step run on other threads, which would hand them
  over in float32); XLA's optimisation passes off (compilation is most of a
  case's time, and they change nothing a float64 comparison can see); a
  compilation cache in `cache_dir`, of this module's run only (many cases
  compile the same initialisation); one PyTorch thread."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  def read(name):
    try:
      return jax.config.read(name)
    except AttributeError:  # flags with a context manager are read as attributes
      return getattr(jax.config, name)

  settings = {"jax_enable_x64": True, "jax_disable_most_optimizations": True,
              "jax_compilation_cache_dir": cache_dir,
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
  saved = {name: read(name) for name in settings}
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  compilation_cache.reset_cache()
  for name, value in settings.items():
    jax.config.update(name, value)
  try:
    yield
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def float64_parity(tmp_path_factory):
  """`parity_settings` for one module's tests, with the session's compilation
  cache (`_CACHE`, of this module's run only when that is off):
  `pytestmark = pytest.mark.usefixtures("float64_parity")`."""
  with parity_settings(_CACHE or str(tmp_path_factory.mktemp("compilation_cache"))):
    yield


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
  """A TFDS data dir with `digits` and `digits_m` built once for the session."""
  from tljax.data import open_domain

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in ("digits", "digits_m"):
    open_domain(name, "train", data_dir=data_dir)
  return data_dir


def tiny_config(data_dir: str, **overrides):
  """The default digits config shrunk to seconds: a narrow CNN, small batches, few steps."""
  import sys
  sys.path.insert(0, str(REPO))
  from configs import default

  config = default.get_config()
  config.data_dir = data_dir
  config.model.backbone_kwargs.widths = (8, 8, 16)
  config.model.bottleneck_dim = 32
  config.batch_size = 16
  config.eval_batch_size = 128
  config.total_steps = 6
  config.log_every = 2
  config.eval_every = 3
  config.checkpoint_every = 3
  config.data.num_threads = 0
  set_fields(config, overrides)
  return config


def model_config(**fields):
  """configs/default.py's `config.model` with `fields` set: what
  `models.create_classifier` reads, for tests that build a classifier alone."""
  import sys
  import ml_collections  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO))
  from configs import default

  config = default.get_config().model
  for key, value in fields.items():
    config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return config


def set_fields(config, fields: dict) -> None:
  """Sets dotted config fields, e.g. `{'method.trade_off': 0.3}`."""
  for key, value in fields.items():
    *parents, leaf = key.split(".")
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = value


def load_config(spec: str, overrides=()):
  """The config of `spec` (`configs/<file>.py[:<arg>]`, as `--config=` takes it),
  with `overrides` ((dotted field, value) pairs) set as `--config.<field>=`
  sets them: on the locked config, so a field it lacks raises `KeyError`."""
  import importlib  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO))
  path, _, arg = spec.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  set_fields(config, dict(overrides))
  return config


def train_lines(workdir: str) -> list[dict]:
  """The training records of a run's metrics.jsonl."""
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if '"train"' in l]


def flat(tree, dtype=None) -> dict:
  """`{keystr(path): numpy leaf}` of a pytree."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return {jax.tree_util.keystr(p): np.asarray(v, dtype)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture
def make_config(digits_data_dir):
  return lambda **overrides: tiny_config(digits_data_dir, **overrides)
