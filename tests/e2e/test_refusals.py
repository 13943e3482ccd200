"""A command that is refused, or fails before it starts, changes nothing on disk: every refusal of every command,
each on a copy of a finished run, the tree hashed before and after; one line on stderr and exit code 2. Then the
classes of user input, walked through every entry point: out-of-range and wrongly typed options, configs that are
not what they seem (a key given twice, an alias bomb, not UTF-8), models and augmentations that take their
arguments but fail on first use, a cache the machine cannot hold, files the harness wrote that are now damaged."""

import shutil
import subprocess
import sys

import pytest

from tests.helpers import DIGITS, FAST, REPO, launch, summary, tree

RUN = ["--config", DIGITS, *FAST, "train.epochs=2", "checkpoint.every_n_steps=15"]


@pytest.fixture(scope="module")
def finished(env, tmp_path_factory):
    """A completed run of two epochs (out/run), and an inference of it in its folder."""
    out = tmp_path_factory.mktemp("finished")
    launch("train.py", [*RUN, "--output-dir", out, "--run-name", "run"], env)
    launch("infer.py", ["--run", out / "run", "--show", "0"], env)
    return out


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished run's output folder, for one test to damage or misuse."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def refused(script: str, args: list, env: dict) -> str:
    """The one line a refused command prints (exit code 2), without its 'error: '."""
    result = launch(script, args, env, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0][len("error: "):]


def damaged_checkpoints(out):
    for folder in (out / "run" / "checkpoints").glob("step-*"):
        (folder / "model.safetensors").write_bytes(b"damaged")


def deleted_checkpoints(out):
    shutil.rmtree(out / "run" / "checkpoints")


def user_file(out):
    (out / "run" / "notes.txt").write_text("mine")


# (a name, what is done to the copy first, the command, what its one line says)
CASES = [
    ("another config", user_file, ("train.py", [*RUN, "--output-dir", "{out}", "--run-name", "run", "optim.lr=0.5"]),
     "holds a run with another config (optim.lr: 0.003 there, 0.5 here)"),
    ("--resume never", None, ("train.py", [*RUN, "--output-dir", "{out}", "--run-name", "run", "--resume", "never"]),
     "already holds a run (--resume never)"),
    ("checkpoints deleted", deleted_checkpoints, ("train.py", [*RUN, "--output-dir", "{out}", "--run-name", "run"]),
     "holds a run that trained (weights, reports) but has no checkpoint left to continue from"),
    ("checkpoints damaged", damaged_checkpoints, ("train.py", [*RUN, "--output-dir", "{out}", "--run-name", "run"]),
     "no usable checkpoint, it cannot continue (step-00000040: model.safetensors is 7 bytes"),
    ("another model resumed", None, ("train.py", ["--resume", "{out}/run", "train.epochs=3", "model.kwargs.width=16"]),
     "cannot load it (RuntimeError: Error(s) in loading state_dict"),
    ("a checkpoint that is not one", None, ("train.py", ["--resume", "{out}/run/checkpoints/step-00000099"]),
     "neither a run directory (with config.yaml) nor a checkpoint folder"),
    ("--force on a folder that is not a run", lambda out: (out / "notes").mkdir() or (out / "notes" / "a.txt").touch(),
     ("train.py", [*RUN, "--output-dir", "{out}", "--run-name", "notes", "--force"]),
     "exists and is not a run directory (--force deletes only runs)"),
    ("an output dir inside a run's checkpoints", None,
     ("train.py", [*RUN, "--output-dir", "{out}/run/checkpoints"]), "which only that run's training writes"),
    ("the same inference again", None, ("infer.py", ["--run", "{out}/run"]),
     "already holds predictions.csv, classification_report.txt, confusion_matrix.png, metrics.json, report.html: --force replaces"),
    ("an inference into the run's weights", None, ("infer.py", ["--run", "{out}/run", "--out", "{out}/run/weights",
                                                                "--force"]), "which only training writes"),
    ("an export over a user's file", lambda out: (out / "model.onnx").write_text("mine"),
     ("export.py", ["--run", "{out}/run", "--format", "torchscript", "--out", "{out}/model.onnx"]),
     "already holds model.onnx: --force replaces them"),
    ("an export into the run's checkpoints", None, ("export.py", ["--run", "{out}/run", "--format", "torchscript",
                                                                  "--out", "{out}/run/checkpoints/x.pt", "--force"]),
     "which only training writes"),
    ("an LR sweep over a user's file", lambda out: (out / "lr_find.csv").write_text("mine"),
     ("lr_find.py", ["--config", DIGITS, "--out", "{out}"]), "already holds lr_find.csv"),
    ("a plot over the run's config", None, ("compare.py", ["{out}/run", "--plot", "{out}/run/config.yaml", "--force"]),
     "which only training writes"),
    ("damaged split lists", lambda out: (out / "run" / "splits" / "test.csv").write_text("path\nx.png\n"),
     ("infer.py", ["--run", "{out}/run", "--force"]), "the run's split lists are damaged"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, damage, command, says", CASES, ids=[case[0] for case in CASES])
def test_a_refused_command_changes_nothing_on_disk(copy, env, name, damage, command, says):
    if damage:
        damage(copy)
    before = tree(copy)
    script, args = command
    message = refused(script, [str(arg).replace("{out}", str(copy)) for arg in args], env)
    assert says in message, message
    assert tree(copy) == before
    assert summary(copy / "run")["status"] == "completed"


@pytest.mark.slow
def test_the_runs_are_never_read_as_data(env, tmp_path):
    """The folder of the runs inside the data root: a run's own pictures never become images of a class."""
    from tests.helpers import make_image_folder, rows

    project = make_image_folder(tmp_path / "project", classes=2, per_class=10)
    command = ["--config", DIGITS, "data.builtin=null", f"data.root={project}", "data.image_size=16", *FAST,
               "train.epochs=1", "--output-dir", project / "runs"]
    launch("train.py", [*command, "--run-name", "first"], env)
    launch("train.py", [*command, "--run-name", "second"], env)
    second = project / "runs" / "second"
    listed = [row["path"] for split in ("train", "val", "test") for row in rows(second / "splits" / f"{split}.csv")]
    assert len(listed) == 20 and not any(path.startswith("runs") for path in listed)
    assert (second / "splits" / "classes.txt").read_text().split() == ["class_0", "class_1"]
    assert "data: skipped 1 run director(y/ies) or the folder of runs (never read as data)" in summary(second)["warnings"]


BAD_OPTIONS = [
    ("train.py", ["--config", DIGITS, "--stop-after-epochs", "0"], "argument --stop-after-epochs: must be at least 1"),
    ("train.py", ["--config", DIGITS, "--stop-after-epochs", "two"], "'two' is not a whole number"),
    ("train.py", ["--config", DIGITS, "--resume"], "argument --resume: expected one argument"),
    ("train.py", ["--config", DIGITS, "--bogus"], "unrecognized arguments: --bogus"),
    ("infer.py", ["--run", "x", "--show", "-1"], "argument --show: must be at least 0, got -1"),
    ("infer.py", ["--run", "x", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    ("infer.py", ["--run", "x", "--tta", "sideways"], "argument --tta: invalid choice: 'sideways'"),
    ("infer.py", ["--run", "x", "--split", "holdout"], "argument --split: invalid choice: 'holdout'"),
    ("infer.py", [], "one of the arguments --run --ensemble is required"),
    ("export.py", ["--run", "x", "--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
    ("export.py", ["--run", "x", "--format", "onnx", "--batch-size", "-3"], "must be at least 1, got -3"),
    ("lr_find.py", ["--config", DIGITS, "--steps", "5"], "argument --steps: must be at least 10, got 5"),
    ("lr_find.py", ["--config", DIGITS, "--start-lr", "1", "--end-lr", "0.1"], "need 0 < start < end"),
    ("lr_find.py", ["--config", DIGITS, "--end-lr", "fast"], "argument --end-lr: invalid float value: 'fast'"),
    ("compare.py", [], "the following arguments are required: runs"),
    ("sweep.py", ["sweeps/lr.yaml", "--task", "-1"], "argument --task: must be at least 0, got -1"),
]


@pytest.mark.parametrize("script, args, says", BAD_OPTIONS, ids=[f"{s} {' '.join(map(str, a))}" for s, a, _ in BAD_OPTIONS])
def test_every_entry_point_refuses_a_wrong_option_in_one_line(env, script, args, says):
    result = subprocess.run([sys.executable, str(REPO / "harness" / script), *map(str, args)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0] and lines[0].startswith("error: "), \
        result.stderr


def config(tmp_path, text: str | bytes):
    path = tmp_path / "bad.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
BAD_INPUT = [
    ("a key given twice", "data: {builtin: digits}\noptim: {lr: 0.1}\noptim: {lr: 0.2}\n", [],
     "bad.yaml: not valid YAML (line 3): the key 'optim' is given twice"),
    ("an alias bomb", "data: {builtin: digits}\n" + BOMB, [], "its aliases expand to more than 100000 values"),
    ("not UTF-8", b"data: {builtin: digits}\nname: caf\xe9\n", [], "not UTF-8 text (byte 0xe9 at offset 33)"),
    ("a model that cannot take the size", "data: {builtin: digits, image_size: 8}\nmodel: {name: alexnet}\n", [],
     "model.name: alexnet cannot take 8x8 images (data.image_size) with model.kwargs {}: RuntimeError"),
    ("a model that cannot take its arguments", "data: {builtin: digits, image_size: 32}\nmodel: {name: vit_b_16, "
     "kwargs: {image_size: 30}}\n", [], "model.kwargs: vit_b_16 cannot be built with {'image_size': 30}"),
    ("an augmentation that fails on first use", "data: {builtin: digits, augmentations: [{name: random_erasing, "
     "value: bogus}]}\n", [], "data.augmentations[0] (random_erasing): ValueError"),
    ("a memory cache too large", "data: {builtin: digits, cache: memory, image_size: 4096}\n", [],
     "data.cache: memory needs 90.4 GB for 1797 images at 4096px"),
    ("a negative seed", "data: {builtin: digits}\ntrain: {seed: -1}\n", [], "train.seed: must be in [0, 2**32)"),
    ("a negative momentum", "data: {builtin: digits}\noptim: {momentum: -0.5}\n", [], "optim.momentum: must be at least 0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, text, extra, says", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_input_that_fails_late_is_refused_in_one_line_before_anything_is_written(env, tmp_path, name, text, extra, says):
    message = refused("train.py", ["--config", config(tmp_path, text), "--output-dir", tmp_path / "runs", *extra], env)
    assert says in message, message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
