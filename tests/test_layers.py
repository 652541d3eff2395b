"""The import contracts of `.importlinter` (which part of tljax may import which)
hold on this tree, and `lint-imports` reports each one a planted import breaks;
the benchmarks call no `_private` name of tljax.

Each check runs import-linter in a process of its own on a copy of the
packages, since in this process `tljax` is already imported from the real tree.
"""

import ast
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

# A copy of the packages and the contract file, the way `lint-imports` sees a checkout.
_COPIED = ("tljax", "benchmarks", ".importlinter")
_LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _LINT, "--no-cache"], cwd=root,
                        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                        capture_output=True, text=True, timeout=300)


@pytest.fixture
def tree(tmp_path) -> pathlib.Path:
  for name in _COPIED:
    source = REPO / name
    if source.is_dir():
      shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(source, tmp_path / name)
  return tmp_path


def _plant(root: pathlib.Path, module: str, line: str) -> None:
  """Adds `line` to the end of `module` (a path below `root`)."""
  path = root / module
  path.write_text(path.read_text() + f"\n{line}\n")


def test_the_contracts_hold_on_this_tree(tree):
  result = _lint(tree)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert _status(result.stdout) == {name: "KEPT" for name in CONTRACTS}, result.stdout[-3000:]


LAYERS = "tljax is layered"
PURE_LOSSES = "tljax.losses imports nothing else of the project"
NO_TOOLS = "tljax imports no benchmark, PyTorch or timm"
COMMANDS = "commands are run, never imported"
CONTRACTS = (LAYERS, PURE_LOSSES, NO_TOOLS, COMMANDS)

# (module to change, the import planted in it, the contracts it breaks, the chain reported)
PLANTED = [
    ("tljax/losses/mmd.py", "import tljax.train", {PURE_LOSSES, LAYERS},
     "tljax.losses.mmd -> tljax.train"),
    ("tljax/models/resnet.py", "from tljax.data import pipeline", {LAYERS},
     "tljax.models.resnet -> tljax.data.pipeline"),
    ("tljax/methods/dann.py", "from tljax import train", {LAYERS},
     "tljax.methods.dann -> tljax.train"),
    ("tljax/data/pipeline.py", "import torch", {NO_TOOLS}, "tljax.data.pipeline -> torch"),
    ("tljax/features.py", "from benchmarks import timing", {NO_TOOLS},
     "tljax.features -> benchmarks.timing"),
    ("tljax/sweep/__init__.py", "from tljax import main", {COMMANDS, LAYERS},
     "tljax.sweep -> tljax.main"),
    ("benchmarks/cases.py", "from benchmarks import train_step", {COMMANDS},
     "benchmarks.cases -> benchmarks.train_step"),
]


def _status(stdout: str) -> dict[str, str]:
  """Contract name -> 'KEPT' or 'BROKEN', from lint-imports' summary lines."""
  lines = (re.fullmatch(r"(.+) (KEPT|BROKEN)( \(.*\))?", line) for line in stdout.splitlines())
  return {match.group(1): match.group(2) for match in lines if match}


@pytest.mark.parametrize("module, line, broken, chain", PLANTED,
                         ids=[case[0] for case in PLANTED])
def test_a_planted_import_breaks_its_contracts(tree, module, line, broken, chain):
  _plant(tree, module, line)
  result = _lint(tree)
  assert result.returncode != 0, result.stdout[-3000:]
  status = _status(result.stdout)
  assert {name for name in CONTRACTS if status.get(name) == "BROKEN"} == broken, status
  assert chain in result.stdout, result.stdout[-3000:]


def test_a_module_outside_every_layer_breaks_the_layers_contract(tree):
  """`exhaustive`: a new module of tljax/ has to be given a layer."""
  (tree / "tljax" / "tasks.py").write_text('"""A module no layer names."""\n')
  result = _lint(tree)
  assert result.returncode != 0
  assert "tljax.tasks" in result.stdout, result.stdout[-3000:]


# ----------------------------------------------------------------------------
# The benchmarks use tljax's public API only.
# ----------------------------------------------------------------------------


def _private_uses(source: str) -> list[str]:
  """`module._name` and `from tljax... import _name` in `source`, where the
  module is one of tljax's (dunder names are not private)."""
  tree = ast.parse(source)
  tljax_names, found = set(), []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      tljax_names.update((alias.asname or alias.name).split(".")[0] for alias in node.names
                         if alias.name.split(".")[0] == "tljax")
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tljax":
      for alias in node.names:
        if alias.name.startswith("_") and not alias.name.startswith("__"):
          found.append(f"{node.module}.{alias.name}")
        tljax_names.add(alias.asname or alias.name)
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      base = node.value
      while isinstance(base, ast.Attribute):
        base = base.value
      if isinstance(base, ast.Name) and base.id in tljax_names:
        found.append(ast.unparse(node))
  return found


def test_the_private_name_check_finds_planted_uses():
  planted = ("from tljax import train\nfrom tljax.data import _helper\nimport tljax.models\n"
             "x = train._open_data(1, 2)\ny = tljax.models._BACKBONES\nz = train.__name__\n"
             "w = other._private\n")
  assert sorted(_private_uses(planted)) == ["tljax.data._helper", "tljax.models._BACKBONES",
                                            "train._open_data"]


def test_benchmarks_call_no_private_name_of_tljax():
  uses = {str(path.relative_to(REPO)): _private_uses(path.read_text())
          for path in sorted((REPO / "benchmarks").glob("*.py"))}
  assert uses and all(not found for found in uses.values()), uses


def test_the_trainer_loads_tensorflow_only_once_a_run_writes():
  """`tljax.writers` (clu's writers, which load TensorFlow) is imported when a
  run starts writing: the entry point and the trainer load without it, so a run
  that stops on bad input answers in the time JAX takes to import."""
  code = ("import sys; import tljax.main, tljax.seeds, tljax.train, tljax.sweep; "
          "print(sorted(m for m in ('tensorflow', 'clu.metric_writers', 'tljax.writers') "
          "if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split("\n")[-2] == "[]", result.stdout
  code = "import sys; import tljax.writers; print('tensorflow' in sys.modules)"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.stdout.split("\n")[-2] == "True", result.stdout  # the check above can fail
