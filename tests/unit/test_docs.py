"""The docs tell the truth: the README's commands are the ones CI runs, the tests launch as the docs show, the
launch configs load, the config reference is the schema's, the architecture page names every package, and every
link between the pages leads somewhere."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from harness.config.schema import Config, EarlyStoppingConfig, EmaConfig, MixupConfig
from tests.helpers import CPU_LAUNCH, DDP, REPO
from tests.unit.test_layout import LAYER

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
USERS_OWN = {"slurm/site.sh"}  # named by the docs, made by a user (from slurm/site.example.sh)


def test_the_config_reference_lists_every_key_with_its_default():
    page = (REPO / "docs" / "config.md").read_text()
    block = page.split("# Config reference", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
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


def test_the_tests_launch_exactly_as_the_docs_show():
    """The launchers the end-to-end tests use are those the docs show, word for word, for training and inference:
    one CPU process in the README, DDP on the CPU in docs/launch.md."""
    for launcher, page in ((CPU_LAUNCH, "README.md"), (DDP, "docs/launch.md")):
        shown = " ".join(["accelerate", *launcher[1:]])
        for script in ("train.py", "infer.py"):
            assert f"{shown} harness/{script}" in (REPO / page).read_text(), f"{page}: {shown} harness/{script}"


@pytest.mark.parametrize("path", sorted((REPO / "launch_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_launch_configs_load_with_accelerate(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1


def test_the_architecture_page_names_every_package():
    page = (REPO / "docs" / "architecture.md").read_text()
    for package in LAYER:
        assert f"| `{package}` |" in page, f"docs/architecture.md: no row for harness/{package}/"


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"(?m)^#+ (.+)$", re.sub(r"(?s)```.*?```", "", page.read_text()))
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_between_the_pages_leads_to_a_file_and_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: {target}: no such file"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_the_pages_name_exists(page):
    named = re.findall(r"`((?:harness|tests|slurm|configs|launch_configs|scripts|bench|sweeps|docs)/[\w./-]+)`",
                       page.read_text())
    missing = [path for path in named if not (REPO / path).exists() and path not in USERS_OWN]
    assert not missing, f"{page.name} names files that are not there: {missing}"
