"""The one registry helper (`tljax.registry`) and the four registries built on it."""

import pkgutil

import pytest

from tljax import methods, models, registry
from tljax.data import registry as data_registry
from tljax.methods import terms


def test_register_get_and_names():
  things = registry.Registry("thing", field="config.thing")

  @things.register("b")
  def make_b():
    return "b"

  things.register("a")(str)
  assert things.get("b") is make_b
  assert things.get("a") is str
  assert things.names() == ["a", "b"]
  assert "a" in things and "c" not in things


def test_an_unknown_name_is_one_line_listing_the_known_ones():
  things = registry.Registry("thing", field="config.thing")
  things.register("alpha")(int)
  things.register("beta")(float)
  with pytest.raises(ValueError) as error:
    things.get("gamma")
  assert str(error.value) == "unknown thing 'gamma'; config.thing must be one of alpha, beta"


def test_a_name_registered_twice_is_an_error():
  things = registry.Registry("thing")
  things.register("x")(int)
  things.register("x")(int)  # the same object again (a module imported twice) is harmless
  with pytest.raises(ValueError, match="thing 'x' is registered twice"):
    things.register("x")(float)


def test_a_scan_registers_what_every_module_of_the_package_defines():
  """Every backbone module registers itself without a hand-kept list: each
  public module of tljax.models that registers a backbone is found."""
  names = models.backbone_names()
  for expected in ("small_cnn", "identity", "resnet50", "vit_base_patch16", "vgg16",
                   "inception_v3"):
    assert expected in names
  # (Tests may register backbones of their own, e.g. tests/test_methods.py.)
  owners = {models.BACKBONES.get(n).__module__.rsplit(".", 1)[-1] for n in names
            if models.BACKBONES.get(n).__module__.startswith("tljax.models.")}
  modules = {m.name for m in pkgutil.iter_modules(models.__path__)}
  assert owners <= modules
  assert {"small_cnn", "identity", "resnet", "vit", "vgg", "inception"} <= owners


def test_methods_terms_and_datasets_share_the_helper():
  for table in (methods.METHODS, terms.TERMS, models.BACKBONES, data_registry.DATASETS):
    assert isinstance(table, registry.Registry)
  assert "source_only" in methods.METHODS and "dann" in terms.TERMS
  assert "dann" in methods.method_names()  # a term also runs alone as a method
  assert {"digits", "office31", "image_folder", "mnist5k_8x8"} <= set(
      data_registry.dataset_names())
  with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*digits"):
    data_registry.open_domain("nope", "train")
