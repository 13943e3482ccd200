"""The project's promises about itself: the README's commands are the ones CI runs, launch configs load."""

import re

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from conftest import REPO


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(python3 -m venv .*?)\n```", (REPO / "README.md").read_text())


def test_ci_runs_exactly_the_readme_test_command():
    quickstart, tests = readme_commands()[:2]
    assert "configs/digits.yaml" in quickstart and "pytest" in tests
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("path", sorted((REPO / "launch_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_launch_configs_load_with_accelerate(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1
