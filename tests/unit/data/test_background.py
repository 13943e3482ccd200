"""A run's splits made by a process forked before torch is imported: the same splits, logs and errors as made in
the training process, and no forked process left behind, whatever happens to the one that forked it. Each case runs
in a fresh interpreter, as the training command does (the tests' own process has torch imported)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO, make_image_folder

PRELUDE = """
import json, logging, os, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(process)d %(levelname)s %(message)s", stream=sys.stdout)
from harness.config.schema import DataConfig
from harness.data import background
from harness.data.splits import discover_splits, read_splits
root, cache = Path(sys.argv[1]), sys.argv[2]
cfg = DataConfig(root=str(root), on_bad_image="skip", val_fraction=0.25, test_fraction=0.25, cache_dir=cache)
def facts(data):
    return [data.classes, data.splits, data.skipped, data.notes, data.fingerprints]
"""


def run(script: str, root: Path, tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + script, str(root), str(tmp_path / "cache")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kw)


def no_children() -> str:
    return """
try:
    os.waitpid(-1, os.WNOHANG)
    print("a child is left")
except ChildProcessError:
    print("no child left")
"""


def test_the_splits_found_early_are_those_found_in_the_process_and_its_lines_are_logged(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8)
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    done = run("""
background.start(lambda: background.finding(cfg, root, None))
early = background.found_splits(cfg, root, None)
print(json.dumps(["same", facts(early) == facts(discover_splits(cfg, root)), os.getpid()]))
""" + no_children(), root, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    same = json.loads(next(line for line in lines if line.startswith('["same"')))
    assert same[1] is True
    # The forked process's warning, logged here when the splits were taken (with its pid); then this one's own.
    pids = [int(line.split()[0]) for line in lines if "leaving out 1 image(s)" in line]
    assert len(pids) == 2 and pids[0] != same[2] and pids[1] == same[2]
    assert lines[-1] == "no child left"


def test_a_users_error_found_early_is_raised_where_the_splits_are_asked_for(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=1, per_class=8)
    done = run("""
from harness.errors import DataError
background.start(lambda: background.finding(cfg, root, None))
try:
    background.found_splits(cfg, root, None)
except DataError as error:
    print("refused:", error)
""" + no_children(), root, tmp_path)
    assert done.stdout.splitlines() == [
        f"refused: {root}: 1 class folder(s) ['class_0']: classification needs at least two", "no child left"]


def test_splits_asked_for_something_else_are_made_here_and_the_forked_process_ends(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8)
    done = run("""
background.start(lambda: background.finding(cfg, root, Path("/elsewhere")))
made = background.found_splits(cfg, root, None)
print(facts(made) == facts(discover_splits(cfg, root)))
""" + no_children(), root, tmp_path)
    assert done.stdout.splitlines() == ["True", "no child left"], done.stderr


def test_a_resumes_splits_read_early_are_those_read_in_the_process(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8)
    done = run("""
cfg.cache = "memory"
discover_splits(cfg, root).save(Path(sys.argv[2]) / "splits")
saved = Path(sys.argv[2]) / "splits"
background.start(lambda: background.reading(saved, root, cfg))
early = background.saved_splits(saved, root, cfg)
print(facts(early) == facts(read_splits(saved, root, cfg)), sorted(early.fingerprints))
""" + no_children(), root, tmp_path)
    assert done.stdout.splitlines() == ["True ['test', 'train', 'val']", "no child left"], done.stderr


def test_the_forked_process_ends_with_the_process_that_forked_it(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8)
    started = subprocess.Popen([sys.executable, "-c", PRELUDE + """
import time
background.start(lambda: time.sleep(300))
print(background._running.pid, flush=True)
time.sleep(300)
""", str(root), str(tmp_path / "cache")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    forked = int(started.stdout.readline())
    assert alive(forked)
    started.send_signal(signal.SIGKILL)
    started.wait()
    deadline = time.monotonic() + 30
    while alive(forked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(forked)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent that does not reap it has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z" and os.path.exists(f"/proc/{pid}")
