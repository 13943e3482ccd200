"""The docs tell the truth: the README's commands are the ones CI runs and the tests launch, the launch configs
load, the config reference lists every key of the schema with its default."""

import dataclasses
import re

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from harness.config.schema import Config, EarlyStoppingConfig, EmaConfig, MixupConfig
from tests.helpers import CPU_LAUNCH, DDP, DIGITS, REPO


def test_readme_config_reference_lists_every_key_with_its_default():
    readme = (DIGITS.parents[1] / "README.md").read_text()
    block = readme.split("## Config reference", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == Config().to_dict()
    for section in (EmaConfig, EarlyStoppingConfig, MixupConfig):  # off by default: keys shown commented out
        for key, value in dataclasses.asdict(section()).items():
            assert f"#   {key}: {value}" in block, key


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
