"""Runs side by side (harness/compare.py): status, best, test accuracy and only the config values that differ."""

import subprocess
import sys

import yaml

from harness.reporting.comparison import compare_table
from harness.reporting.tables import format_table
from tests.helpers import REPO, fake_run


def test_compare_shows_status_best_test_and_only_the_config_values_that_differ(tmp_path):
    a = fake_run(tmp_path, "digits_lr0.1-j7_0", 0.1, "completed", 0.123456, 0.98765)
    b = fake_run(tmp_path, "digits_lr0.01-j7_1", 0.01, "interrupted", 0.5, None)
    rows = compare_table([a, b])
    assert rows == [
        ["run", "status", "epoch", "best val", "best epoch", "test acc", "optim.lr"],
        ["digits_lr0.1-j7_0", "completed", "3/12", "val_loss 0.1235", "2", "0.9877", "0.1000"],
        ["digits_lr0.01-j7_1", "interrupted", "3/12", "val_loss 0.5000", "2", "-", "0.0100"],
        ["mean ± std of 2", "", "", "val_loss 0.3117 ± 0.1883", "", "-", ""],
    ]
    header, first, second, _ = format_table(rows).splitlines()
    assert header.index("status") == first.index("completed") == second.index("interrupted")  # columns line up
    (tmp_path / "not_a_run").mkdir()
    result = subprocess.run([sys.executable, "harness/compare.py", str(a), str(tmp_path / "not_a_run")], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().endswith("not_a_run: not a run directory (no config.yaml)")
    assert yaml.safe_load((a / "config.yaml").read_text())["optim"]["lr"] == 0.1
