"""The project's promises about itself: the README's commands are the ones CI runs, launch configs load."""

import ast
import re

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from conftest import CPU_LAUNCH, DDP, REPO


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(python3 -m venv .*?)\n```", (REPO / "README.md").read_text())


def test_ci_runs_exactly_the_readme_test_command():
    quickstart, tests = readme_commands()[:2]
    assert "configs/digits.yaml" in quickstart and "pytest" in tests
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()


def test_the_tests_launch_exactly_as_the_readme_shows():
    """The launchers the end-to-end tests use are the README's, word for word, for training and inference."""
    readme = (REPO / "README.md").read_text()
    for launcher in (CPU_LAUNCH, DDP):
        shown = " ".join(["accelerate", *launcher[1:]])
        for script in ("train.py", "infer.py"):
            assert f"{shown} harness/{script}" in readme, f"{shown} harness/{script}"


@pytest.mark.parametrize("path", sorted((REPO / "launch_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_launch_configs_load_with_accelerate(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1


def harness_imports(module: str) -> set[str]:
    """The harness modules ``module`` imports, directly or through others (lazy imports included)."""
    found, todo = set(), [module]
    while todo:
        path = REPO / "harness" / todo.pop().replace(".", "/")
        tree = ast.parse((path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness."):
                name = node.module.split(".", 1)[1]
                if name not in found:
                    found.add(name)
                    todo.append(name)
    return found


def test_inference_imports_nothing_of_training():
    imported = harness_imports("infer")
    assert {"predict", "evaluation.evaluate", "checkpointing.weights"} <= imported
    assert not imported & {"run", "plan", "build", "trainer", "epoch", "checkpointing.saving", "checkpointing.state", "reporting.summary", "runtime.signals"}


def test_modules_and_functions_stay_small_enough_to_read_at_once():
    for path in sorted((REPO / "harness").rglob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 300, f"{path.name}: split it by job"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 50, f"{path.name}: {node.name} is too long"
