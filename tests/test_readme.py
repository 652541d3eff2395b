"""The README's commands name configs, tasks and grids that exist and load."""

import re

import pytest

from conftest import REPO, load_config
from tljax import sweep

README = (REPO / "README.md").read_text()
# `--config=configs/<file>.py[:<arg>]` and `--grid=experiments/grids/<file>.py[:<arg>]`,
# placeholders (`<method>`) left out.
CONFIGS = sorted(set(re.findall(r"--config=(configs/[a-z0-9_]+\.py(?::[a-z0-9_]+)?)", README)))
GRIDS = sorted(set(re.findall(r"--grid=(experiments/grids/[a-z0-9_]+\.py(?::[a-z0-9_]+)?)",
                              README)))


def test_the_readme_names_configs_and_grids():
  assert "configs/dann.py:digits" in CONFIGS  # the first command's
  assert len(CONFIGS) > 10 and len(GRIDS) > 5


@pytest.mark.parametrize("spec", CONFIGS)
def test_each_config_the_readme_names_loads(spec):
  assert load_config(spec).method.name


@pytest.mark.parametrize("spec", GRIDS)
def test_each_grid_the_readme_names_expands(spec, monkeypatch):
  monkeypatch.chdir(REPO)
  assert sweep.expand(sweep.load_grid(spec))
