"""The code's layout: the commands at harness/'s root, packages in layers importing only downward, no private
name across modules, inference and tuning apart from training, modules and functions small enough to read."""

import ast
import re
from pathlib import Path

import pytest
import setuptools

from tests.helpers import REPO

# The packages of harness/, lowest first: a package imports only from the layers below it (and harness.errors).
LAYERS = [("runtime",), ("storage",), ("config",), ("data", "models"), ("optim", "checkpointing", "evaluation"),
          ("reporting",), ("training", "inference", "tuning")]


LAYER = {package: i for i, packages in enumerate(LAYERS) for package in packages}


COMMANDS = {"train", "infer", "export", "lr_find", "compare", "sweep", "pack", "preflight"}  # harness/<command>.py


SHARED = {"__init__", "errors", "cli"}  # what every command shares


def modules() -> dict[str, Path]:
    """Every module of harness/ by its dotted name under ``harness.`` (a package by its own name)."""
    found = {}
    for path in sorted((REPO / "harness").rglob("*.py")):
        parts = path.relative_to(REPO / "harness").with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)] = path
    return found


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """The harness modules a file imports (lazy imports included, and the command bodies ``run_command`` names
    as ``"harness.package.module:function"``), each with the names taken from it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness."):
            found.append((node.module.removeprefix("harness."), [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.module == "harness":
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"harness(\.\w+)+:\w+",
                                                                                             node.value):
            found.append((node.value.split(":")[0].removeprefix("harness."), []))
    return found


def reachable(start: str) -> set[str]:
    """The harness modules ``start`` imports, directly or through others."""
    every, found, todo = modules(), set(), [start]
    while todo:
        for module, _ in imports_of(every[todo.pop()]):
            if module not in found:
                found.add(module)
                todo.append(module)
    return found


def test_the_root_holds_the_commands_and_what_they_share_and_every_folder_is_a_layered_package():
    roots = {name for name in modules() if "." not in name and (REPO / "harness" / f"{name}.py").is_file()}
    assert roots == COMMANDS | SHARED
    folders = {path.name for path in (REPO / "harness").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == set(LAYER), "a new package needs its place in LAYERS (and docs/architecture.md)"


def test_imports_point_down_between_packages_and_never_at_a_private_name():
    for name, path in modules().items():
        package = name.split(".")[0]
        for module, names in imports_of(path):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path}: imports {private} from harness.{module}: make it public or move it"
            target = module.split(".")[0]
            if package in LAYER and target not in ("errors", package):
                assert LAYER.get(target, len(LAYERS)) < LAYER[package], f"{path}: imports harness.{module} (upward)"


@pytest.mark.parametrize("command", ["infer", "export", "lr_find", "compare", "sweep"])
def test_inference_and_tuning_never_import_training(command):
    reached = reachable(command)
    assert {"inference.command", "inference.export", "tuning.lr_finder", "reporting.comparison",
            "tuning.sweeps"} & reached
    assert not {module for module in reached if module.split(".")[0] == "training"}


def test_modules_and_functions_stay_small_enough_to_read_at_once():
    for path in modules().values():
        source = path.read_text()
        assert len(source.splitlines()) <= 300, f"{path}: split it by job"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 50, f"{path}: {node.name} is too long"


def test_the_distribution_ships_every_package():
    """A wheel (not only an editable install) holds every package of harness/."""
    found = re.search(r"\[tool\.setuptools\.packages\.find\]\ninclude = \[(.*)\]", (REPO / "pyproject.toml").read_text())
    include = [pattern.strip(' "') for pattern in found.group(1).split(",")]
    packages = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "harness").rglob("__init__.py")}
    assert set(setuptools.find_packages(where=REPO, include=include)) == packages
