"""A stop at any moment is a clean stop: SIGINT, SIGTERM or SIGUSR1 in every phase of a training (the testing aid
HARNESS_PAUSE_AT holds it there) ends it with the documented exit code, releases the run's lock, leaves nothing
half-done, and the same command then finishes only what is left. (Stops inside the epochs: tests/e2e/test_resume.py;
a kill -9 at any moment: tests/e2e/test_kill.py.)"""

import signal
import subprocess

import pytest

from harness.training.probes import PHASES
from tests.helpers import DIGITS, FAST, PYTHON, REPO, run_train, summary, tree

SIGNALS = {"start": signal.SIGTERM, "data": signal.SIGINT, "cache": signal.SIGUSR1, "model": signal.SIGTERM,
           "written": signal.SIGINT, "epoch": signal.SIGUSR1, "final": signal.SIGUSR1, "reports": signal.SIGTERM}
BEFORE_ANYTHING_IS_WRITTEN = ("start", "data", "cache", "model")


def stopped_at(phase: str, command: list, env: dict) -> subprocess.CompletedProcess:
    """Run the training until it pauses at ``phase``, then send that phase's signal; its outcome."""
    process = subprocess.Popen([*PYTHON, str(REPO / "harness" / "train.py"), *map(str, command)],
                               env={**env, "HARNESS_PAUSE_AT": phase}, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.strip() == f"paused at {phase}":
            break
    process.send_signal(SIGNALS[phase])
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(lines) + out, err)


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_a_stop_in_any_phase_is_clean_and_the_same_command_finishes_what_is_left(phase, env, tmp_path):
    command = ["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "run", *FAST, "train.epochs=1",
               "data.cache=memory"]
    run = tmp_path / "run"
    before = tree(tmp_path)
    stopped = stopped_at(phase, command, env)
    signum = SIGNALS[phase]
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert not (tmp_path / ".run.lock").exists()  # released with the training
    if phase in BEFORE_ANYTHING_IS_WRITTEN:
        assert f"stopped by {signum.name} before training started" in stopped.stdout
        assert tree(tmp_path) == before  # nothing was written
        return
    if phase == "written":  # the run's config and split lists, no summary and no checkpoint yet
        assert (run / "config.yaml").exists() and not (run / "summary.json").exists()
    else:
        assert summary(run)["status"] == "interrupted" and summary(run)["reason"] == f"stopped by {signum.name}"
    finished = run_train(command, env)
    s = summary(run)
    assert s["status"] == "completed" and s["epoch"] == 1 and "test_acc" in s
    trained_again = "epoch 1/1" in finished.stdout
    assert trained_again == (phase == "written")  # after the last epoch, only the final evaluation is left
    assert "evaluating the best weights" in finished.stdout and (run / "reports" / "curves.png").exists()


@pytest.mark.slow
def test_a_stop_while_a_run_resumes_leaves_it_as_it_was(env, tmp_path):
    command = ["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "run", *FAST, "train.epochs=2"]
    run_train([*command, "--stop-after-epochs", "1"], env)
    before = tree(tmp_path)
    stopped = stopped_at("model", command, env)  # the checkpoint's data read back, the model being built
    assert stopped.returncode == 128 + SIGNALS["model"] and tree(tmp_path) == before
    assert summary(tmp_path / "run")["status"] == "interrupted" and summary(tmp_path / "run")["epoch"] == 1
