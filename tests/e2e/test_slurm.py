"""SLURM: the scripts in slurm/, submitted with sbatch as the README shows, on a real local cluster
(scripts/slurm_local.sh start --nodes 3: slurmctld, slurmd and munge on this machine, started here when none
answers; the multi-node jobs run on partition `two`, two nodes with host names and addresses of their own, and on
partition `loopback`, whose second node's own name resolves to 127.0.1.1 there).

Every job of the module is submitted at once by the ``jobs`` fixture and they run side by side (the test
cluster has more CPU slots than cores): most of a job's life is waiting for SLURM (the time-limit tick, the
requeue delay), so the module takes about as long as its longest job. The preemption test drives its own job
while the others run. After each job: no process of it is left on the machine."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, REPO, assert_same_weights, run_infer, summary, without_threads

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


DIGITS = "configs/digits.yaml"  # as the README writes it, from the repository root


# Long enough that the time-limit signal (at most 30 s after the start) and the preemption test's two signals
# all find the training still running; every run of this config must end with the same weights.
LONG = [*FAST, "train.epochs=16"]


SHORT = [*FAST, "train.epochs=2"]


FOUR = [*FAST, "train.epochs=4"]  # the runs across nodes, stopped and resumed, against one run on one node


ONE_CPU = ["--cpus-per-task=1"]  # each job's processes use one thread: the jobs share the machine's cores


TWO_NODES = ["--partition=two", "--nodes=2"]  # node1 and node2 (scripts/slurm_local.sh start --nodes 3)


LOOPBACK_NODES = ["--partition=loopback", "--nodes=2"]  # node1 and node3, whose own name is 127.0.1.1 there


ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
          "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT")


class Job:
    """A submitted batch job: its id, output file and run directory."""

    def __init__(self, id: str, out: Path, runs: Path) -> None:
        self.id, self.out, self.runs = id, out, runs

    def info(self) -> dict[str, str]:
        line = subprocess.run(["scontrol", "-o", "show", "job", self.id], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0]
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait(self, timeout: float = 420) -> dict[str, str]:
        """The job's final record, once it has really ended (requeues followed, COMPLETING over)."""
        deadline = time.monotonic() + timeout
        while (info := self.info())["JobState"] in ACTIVE:
            if time.monotonic() > deadline:
                subprocess.run(["scancel", self.id])
                raise AssertionError(f"job {self.id} still {info['JobState']} after {timeout} s:\n{self.log()}")
            time.sleep(1)
        assert_no_process_left(info["JobId"])
        return info

    def log(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def wait_for_log(self, pattern: str, after: int = 0, timeout: float = 300) -> int:
        """Wait until ``pattern`` appears in the output file after offset ``after``; returns where it ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log()[after:])
            if found:
                return after + found.end()
            time.sleep(0.2)
        raise AssertionError(f"job {self.id}: no {pattern!r} in its output within {timeout} s:\n{self.log()}")

    def run_dir(self) -> Path:
        (found,) = [p for p in self.runs.iterdir() if p.name.endswith(f"-j{self.id}")]
        return found


def _controller_answers() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def cluster():
    """A SLURM controller for the session: the one that answers, or a local one started (and stopped) here."""
    if _controller_answers():
        yield
        return
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("no SLURM controller answers, and starting one (scripts/slurm_local.sh start) needs root")
    subprocess.run(["bash", str(REPO / "scripts" / "slurm_local.sh"), "start", "--nodes", "3"], check=True, timeout=600)
    yield
    subprocess.run(["bash", str(REPO / "scripts" / "slurm_local.sh"), "stop"], timeout=300)


def assert_no_process_left(job_id: str) -> None:
    """No process on this machine still carries the job in its environment (slurmstepd aside)."""
    deadline = time.monotonic() + 3  # a process exiting at this very moment is not left behind
    while True:
        left = []
        for proc in Path("/proc").iterdir():
            try:
                environ = (proc / "environ").read_bytes()
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            if f"\0SLURM_JOB_ID={job_id}\0".encode() in b"\0" + environ and "slurmstepd" not in command:
                left.append(f"{proc.name}: {command}")
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, f"processes of job {job_id} outlived it:\n" + "\n".join(left)


def sbatch(script: str, args: list[str], options: list[str], env: dict, out: Path, repo: Path = REPO,
           **variables: str) -> Job:
    """``sbatch [options] slurm/<script> args...`` from the repository root, as the README shows, from a user's
    environment (the scripts set the threads from the allocation)."""
    runs = out / "runs"
    output = out / ("slurm-%A_%a.out" if any(o.startswith("--array") for o in options) else "slurm-%j.out")
    result = subprocess.run(["sbatch", "--parsable", f"--output={output}", *ONE_CPU, *options, f"slurm/{script}",
                             *map(str, args)], cwd=repo,
                            env={**without_threads(env), "OUTPUT_DIR": str(runs), **variables},
                            capture_output=True, text=True, check=True)
    job_id = result.stdout.strip().split(";")[0]
    return Job(job_id, Path(str(output).replace("%j", job_id)), runs)


def extend_after_first_requeue(job: Job, minutes: int = 10) -> None:
    """Raise the time limit of ``job`` once it has been requeued (while the next attempt waits to start)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        info = job.info()
        if info["Restarts"] != "0" or info["JobState"] not in ACTIVE:
            break
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job.id}", f"TimeLimit={minutes}"], capture_output=True)


def signal_after(job: Job, pattern: str) -> None:
    """``scancel --signal=USR1 --batch`` once ``pattern`` is in the job's output."""
    job.wait_for_log(pattern)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job.id], capture_output=True)


def signal_then_requeue(job: Job, epochs: int) -> None:
    """SIGUSR1 in the second epoch, then ``scontrol requeue`` (SIGTERM to every process on every node) in the third
    epoch of the second attempt."""
    signal_after(job, rf"epoch 1/{epochs} ")
    at = job.wait_for_log(r"attempt 2,")
    job.wait_for_log(rf"epoch 2/{epochs} ", after=at)
    subprocess.run(["scontrol", "requeue", job.id], capture_output=True)


def signal_rank_after(job: Job, rank: int, pattern: str, signum: int) -> None:
    """Send ``signum`` to the training process of ``rank`` (not its launcher) once ``pattern`` is in the job's
    output."""
    job.wait_for_log(pattern)
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (f"SLURM_JOB_ID={job.id}".encode() in environ and f"RANK={rank}".encode() in environ
                and b"harness/train.py" in command and b"launch" not in command):  # the worker, not torchrun
            os.kill(int(proc.name), signum)


def container_repo(root: Path) -> Path:
    """A clone of the repository whose slurm/site.sh does what a container image would: its own venv (this one),
    SLURM's commands but scontrol (a container that has sbatch's client libraries but not every command), and a
    line saying on which node it was sourced."""
    repo = root / "repo"
    (repo / "slurm").mkdir(parents=True)
    for part in ("harness", "configs", "launch_configs"):
        (repo / part).symlink_to(REPO / part)
    for script in (REPO / "slurm").glob("*.sh"):
        (repo / "slurm" / script.name).symlink_to(script)
    commands = root / "bin"
    commands.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin"):
        for command in Path(folder).iterdir() if Path(folder).is_dir() else ():
            if command.name != "scontrol" and not (commands / command.name).exists():
                (commands / command.name).symlink_to(command)
    (repo / "slurm" / "site.sh").write_text(
        f'echo "site.sh on $(hostname)"\n. {sys.prefix}/bin/activate\nexport PATH={sys.prefix}/bin:{commands}\n')
    return repo


@pytest.fixture(scope="module")
def jobs(cluster, env, tmp_path_factory) -> dict[str, Job]:
    """Every job of this module, submitted together."""
    out = tmp_path_factory.mktemp("slurm")
    sweep = out / "sweep.yaml"
    sweep.write_text("grid:\n  optim.lr: [0.003, 0.001]\n")
    submitted = {
        "complete": sbatch("train.sh", [DIGITS, *LONG], [], env, out),
        # The time-limit signal comes at SLURM's next 30-second tick after "4 minutes - 60 s", in the training: the
        # first epoch ends within two and a half minutes, every job of the module starting at once on the machine's
        # cores (the start alone took 100 s once), and waits there for it (HARNESS_PAUSE_AT=epoch; on a busier
        # machine the signal stops the first epoch, which is as good); the second attempt does not pause.
        "time_limit": sbatch("train.sh", [DIGITS, *LONG], ["--time=4", "--signal=B:USR1@60"], env, out,
                             HARNESS_PAUSE_AT="epoch"),
        # With a loader worker: SLURM's SIGTERM reaches it too, and it must keep serving until the save.
        "preempted": sbatch("train.sh", [DIGITS, *LONG, "data.num_workers=1"], [], env, out),
        "machines": sbatch("train_multinode.sh", [DIGITS, *FOUR], TWO_NODES, env, out),
        "one_node_ddp": sbatch("train.sh", [DIGITS, *FOUR], ["--ntasks=2"], env, out),
        # Debian's own-name line on node3: refused on that node before anything starts.
        "loopback": sbatch("train_multinode.sh", [DIGITS, *SHORT], LOOPBACK_NODES, env, out),
        # A job submitted without its environment, in a container without scontrol: it cannot requeue itself.
        "export_none": sbatch("train_multinode.sh", [DIGITS, *FOUR], ["--export=NONE", *TWO_NODES], env,
                              out / "container", container_repo(out / "container")),
        "typo": sbatch("train.sh", [DIGITS, "optim.lrr=0.1"], [], env, out),
    }
    if importlib.util.find_spec("deepspeed"):
        submitted["deepspeed_machines"] = sbatch(
            "train_multinode.sh", [DIGITS, *SHORT, "train.mixed_precision=no"], TWO_NODES, env, out,
            LAUNCH_CONFIG="launch_configs/deepspeed_zero2.yaml")
    # The time-limit job's second attempt gets time to finish: the cycle under test is the first one.
    threading.Thread(target=extend_after_first_requeue, args=(submitted["time_limit"],), daemon=True).start()
    array = sbatch("sweep.sh", [DIGITS, sweep, *SHORT], ["--array=0-1"], env, out)
    for task in (0, 1):
        submitted[f"sweep_{task}"] = Job(f"{array.id}_{task}", out / f"slurm-{array.id}_{task}.out", out / "runs")
    # A node's training process killed (an OOM kill, a crash) in the second epoch: the other node must not wait.
    submitted["node_lost"] = sbatch("train_multinode.sh", [DIGITS, *LONG], TWO_NODES, env, out)
    threading.Thread(target=signal_rank_after, args=(submitted["node_lost"], 1, r"epoch 2/16 ", signal.SIGKILL),
                     daemon=True).start()
    # A node's training process that hangs (stopped: its sockets stay open): the other waits the config's timeout.
    submitted["node_hung"] = sbatch("train_multinode.sh", [DIGITS, *LONG, "train.collective_timeout_minutes=1"],
                                    TWO_NODES, env, out)
    threading.Thread(target=signal_rank_after, args=(submitted["node_hung"], 1, r"epoch 1/16 ", signal.SIGSTOP),
                     daemon=True).start()
    # An array task requeues itself as an array task; a multi-node job relays the signal to every machine.
    threading.Thread(target=signal_after, args=(submitted["sweep_1"], r"epoch 1/2 "), daemon=True).start()
    threading.Thread(target=signal_after, args=(submitted["export_none"], r"epoch 1/4 "), daemon=True).start()
    threading.Thread(target=signal_then_requeue, args=(submitted["machines"], 4), daemon=True).start()
    submitted["export_none"].runs = out / "container" / "repo" / "runs"  # OUTPUT_DIR is not exported: the default
    yield submitted
    subprocess.run(["scancel", *(job.id for job in submitted.values())], capture_output=True)


def test_preemption_by_requeue_or_by_signal_checkpoints_requeues_and_finishes_exactly(jobs):
    """``scancel --signal=USR1 --batch`` (what a preempting scheduler or a user sends) and ``scontrol requeue``
    (SIGTERM to every process) in the middle of a run: each time a checkpoint where it stands (mid-epoch), a
    requeue and a resume; the third attempt finishes with the weights of the run that was never stopped (which had
    no loader worker)."""
    job = jobs["preempted"]
    at = job.wait_for_log(r"epoch 2/16")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job.id], check=True)
    at = job.wait_for_log(r"requeueing job", after=at)
    at = job.wait_for_log(r"resuming epoch \d+ at batch", after=at)
    at = job.wait_for_log(r"epoch \d+/16 ", after=at)
    subprocess.run(["scontrol", "requeue", job.id], check=True)
    job.wait_for_log(r"attempt 3", after=at)
    info = job.wait()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "2"), job.log()
    log = job.log()
    # Each stop saves where it is; a signal that lands in validation is taken at the epoch's own checkpoint.
    assert log.count("stopped by SIG") == 2 and log.count("resumed from") == 2 and "resuming epoch" in log, log
    assert "got SIGUSR1" in log and "got SIGTERM" in log and " failed" not in log
    run = job.run_dir()
    assert summary(run)["status"] == "completed"
    assert_same_weights(run / "weights" / "last.safetensors", jobs["complete"].run_dir() / "weights" / "last.safetensors")


def test_a_job_completes_and_inference_reproduces_it(jobs, env):
    job = jobs["complete"]
    info = job.wait()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), job.log()
    run = job.run_dir()
    trained = summary(run)
    assert trained["status"] == "completed" and trained["epoch"] == 16
    assert f"run directory {run}: completed" in job.log()
    out = run.parent.parent / "infer-direct"
    run_infer(["--run", run, "--out", out], env)
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == trained["test_acc"]
    inferred = sbatch("infer.sh", [run], [], env, run.parent.parent)
    info = inferred.wait()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), inferred.log()
    predictions = run / "inference" / "test_best" / "predictions.csv"
    assert len(predictions.read_text().splitlines()) == 1 + trained["images"]["test"]


def test_the_time_limit_signal_checkpoints_requeues_and_the_next_attempt_finishes_exactly(jobs):
    job = jobs["time_limit"]
    info = job.wait()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), job.log()
    log = job.log()
    first, second = log.split("attempt 2,")
    assert "got SIGUSR1" in first and "stopped by SIGUSR1" in first and "requeueing job" in first, log
    assert "resumed from" in second and "run directory" in second and ": completed" in second, log
    assert " failed" not in log, log  # the requeue ends the attempt, scontrol included, yet it reports success
    assert_same_weights(job.run_dir() / "weights" / "last.safetensors",
                        jobs["complete"].run_dir() / "weights" / "last.safetensors")


def test_two_machines_train_through_multi_node_yaml_like_two_processes_on_one_node(jobs):
    """Two nodes, each its own host (name, address, network namespace): machine ranks 0 and 1 meet over gloo at the
    first one, are stopped by SIGUSR1 in the second epoch (the batch shell relays it to both machines' training
    processes), requeued and resumed, then requeued by ``scontrol requeue`` (SIGTERM to every process on both nodes)
    in the third, and resumed: the same weights as a 2-process run of slurm/train.sh on one node."""
    machines, ddp = jobs["machines"], jobs["one_node_ddp"]
    for job in (machines, ddp):
        info = job.wait()
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), job.log()
    assert machines.info()["Restarts"] == "2" and ddp.info()["Restarts"] == "0"
    log = machines.log()
    first, second, third = re.split(r"attempt [23],", log)
    assert "got SIGUSR1" in first and "requeueing job" in first and "stopped by SIGUSR1" in first, log
    assert "got SIGTERM" in second and "stopped by SIGTERM" in second and "resumed from" in second, log
    assert "resumed from" in third and ": completed" in third and "\nerror" not in log, log
    assert "CANCELLED" not in first.split("requeueing job")[0], log  # a requested stop ends no machine's step early
    assert log.count("machine 0 of 2 on node1") == log.count("machine 1 of 2 on node2") == 3, log
    assert "main node1:" in log, log
    assert "(2 process(es) (MULTI_CPU), device cpu" in log, log
    assert log.count("launch_configs/multi_node.yaml") == 6, log  # two machines, three attempts
    assert "launch_configs/cpu_ddp.yaml --num_processes 2" in ddp.log()
    assert summary(machines.run_dir())["num_processes"] == summary(ddp.run_dir())["num_processes"] == 2
    assert_same_weights(machines.run_dir() / "weights" / "last.safetensors",
                        ddp.run_dir() / "weights" / "last.safetensors")


@pytest.mark.deepspeed
def test_deepspeed_across_machines_goes_through_the_same_script(jobs):
    if "deepspeed_machines" not in jobs:
        pytest.skip("the deepspeed extra is not installed (pip install -e '.[deepspeed]')")
    job = jobs["deepspeed_machines"]
    info = job.wait()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), job.log()
    log = job.log()
    for rank in (0, 1):
        assert (f"machine {rank} of 2 on node{rank + 1}" in log
                and "deepspeed_zero2.yaml --deepspeed_multinode_launcher standard" in log), log
    trained = summary(job.run_dir())
    assert (trained["status"], trained["distributed_type"], trained["num_processes"]) == ("completed", "DEEPSPEED", 2)


def test_an_array_sweep_trains_one_config_per_task_and_compare_lists_them(jobs):
    runs = []
    for task in (0, 1):
        job = jobs[f"sweep_{task}"]
        info = job.wait()
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), job.log()
        (run,) = job.runs.glob(f"*-j{job.id}")
        runs.append(run)
    assert [summary(r)["status"] for r in runs] == ["completed", "completed"]
    signalled = jobs["sweep_1"]  # stopped by SIGUSR1 in its second epoch: requeued as an array task, resumed
    assert signalled.info()["Restarts"] == "1", signalled.log()
    assert f"requeueing job {signalled.id}" in signalled.log() and "resumed from" in signalled.log()
    assert ["lr0.003" in runs[0].name, "lr0.001" in runs[1].name] == [True, True]
    table = subprocess.run([sys.executable, "harness/compare.py", *map(str, runs)], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["run", "status", "epoch"] and "optim.lr" in table[0]
    for run, row in zip(runs, table[1:]):
        acc = f"{summary(run)['test_acc']:.4f}"
        assert row.split()[:3] == [run.name, "completed", "2/2"] and acc in row


def test_a_user_error_fails_the_job_with_one_line_and_no_requeue(jobs):
    job = jobs["typo"]
    info = job.wait()
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0" and info["ExitCode"] != "0:0", job.log()
    errors = [line for line in job.log().splitlines() if line.startswith("error:")]
    assert errors == [f"error: {DIGITS}: optim.lrr: unknown key (did you mean 'optim.lr'?)"], job.log()
    assert "Traceback" not in job.log() and "requeue" not in job.log()


def test_a_killed_training_process_on_one_node_ends_the_job_on_every_node(jobs):
    """The other node's training sees its peer gone at its next collective and ends with one line saying so; srun
    ends the step on every node; the job fails (a crash is not a stop signal: no requeue), its last checkpoint
    intact for the same command, and no process of it outlives it."""
    job = jobs["node_lost"]
    info = job.wait()
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "0"), job.log()
    log = job.log()
    assert "error: another process of the run ended (its error is above)" in log, log
    assert "requeueing" not in log, log
    trained = summary(job.run_dir())
    assert trained["status"] == "failed" and trained["error"].startswith("another process of the run ended"), trained
    assert (job.run_dir() / "checkpoints" / "latest").exists()


def test_a_node_whose_own_name_resolves_to_loopback_ends_the_job_at_once_naming_it(jobs):
    """node3's /etc/hosts maps its own name to 127.0.1.1 (as Debian's installer writes it): gloo would announce
    that address to node1, which would wait for it until a timeout. The job fails before any training starts, with
    one line naming the node, the name and the ways out, and no requeue."""
    job = jobs["loopback"]
    info = job.wait()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "2:0", "0"), job.log()
    errors = [line for line in job.log().splitlines() if line.startswith("error")]
    assert errors == ["error: node node3: the name node3 resolves to 127.0.1.1, a loopback address the other nodes "
                      "cannot reach: map node3 to its network address in /etc/hosts or DNS, or set GLOO_SOCKET_IFNAME "
                      "to this node's interface (slurm/site.sh)"], job.log()
    assert "Traceback" not in job.log() and "requeue" not in job.log() and not list(job.runs.glob(f"*-j{job.id}"))


def test_a_hung_training_process_on_one_node_ends_the_job_after_the_configured_collective_timeout(jobs):
    """A stopped process (a hang: its sockets stay open, so nobody sees it gone) holds the other node in a
    collective until train.collective_timeout_minutes; then that node fails with one line naming the key, srun ends
    the hung one, and the job fails without a requeue, its checkpoint intact."""
    job = jobs["node_hung"]
    info = job.wait()
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "0"), job.log()
    log = job.log()
    assert ("error: no answer from another process of the run within 1 minutes (train.collective_timeout_minutes): "
            "it hangs, or its node is gone") in log, log
    assert "requeueing" not in log, log
    trained = summary(job.run_dir())
    assert trained["status"] == "failed" and "train.collective_timeout_minutes" in trained["error"], trained
    assert (job.run_dir() / "checkpoints" / "latest").exists()


def test_a_job_without_its_environment_in_a_container_without_scontrol_says_how_to_continue_and_that_works(jobs, env):
    """``sbatch --export=NONE``: the batch shell gets SLURM's variables alone, and its srun steps too unless told
    otherwise; slurm/site.sh (here: a container's venv, and no scontrol) is sourced on both nodes. Stopped by
    SIGUSR1, the run checkpoints, but the job cannot requeue itself: it fails with one line naming the variables
    that continue the run, and a job submitted with them finishes it exactly."""
    job = jobs["export_none"]
    info = job.wait()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "2:0", "0"), job.log()
    log = job.log()
    assert "site.sh on node1" in log and "site.sh on node2" in log and "machine 1 of 2 on node2" in log, log
    run = job.run_dir()
    assert summary(run)["status"] == "interrupted"
    line = (f"error: cannot requeue job {job.id}: scontrol is not on PATH here (a container without SLURM's "
            f"commands?); the run checkpointed in runs/{run.name}: submit the job again with OUTPUT_DIR=runs "
            f"RUN_NAME={run.name} to continue it, or make scontrol available (slurm/site.sh)")
    assert [x for x in log.splitlines() if x.startswith("error")] == [line], log
    repo = run.parent.parent
    again = sbatch("train_multinode.sh", [DIGITS, *FOUR], [f"--export=RUN_NAME={run.name}", *TWO_NODES], env,
                   repo.parent, repo)
    info = again.wait()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), again.log()
    assert "resumed from" in again.log() and summary(run)["status"] == "completed"
    assert_same_weights(run / "weights" / "last.safetensors",
                        jobs["one_node_ddp"].run_dir() / "weights" / "last.safetensors")


def test_the_preflight_names_a_node_the_others_cannot_exchange_data_with(cluster):
    """node1 reaches the main node's port (10.77.0.1 on the cluster's bridge) but announces an address nobody else
    can reach (GLOO_SOCKET_IFNAME=lo): both say so within the pre-flight's timeout, instead of a training rendezvous
    that waits many minutes."""
    port = 29400 + os.getpid() % 500
    command = [sys.executable, "harness/preflight.py", "--main-host", "10.77.0.1", "--port", str(port),
               "--machines", "2", "--timeout", "5", "--machine-rank"]
    main = subprocess.Popen([*command, "0"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    node = subprocess.run(["nsenter", "--net=/run/netns/node1", *command, "1"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"}, timeout=120)
    _, main_errors = main.communicate(timeout=120)
    for code, stderr in ((main.returncode, main_errors), (node.returncode, node.stderr)):
        (line,) = [x for x in stderr.splitlines() if x.startswith("error")]
        assert code == 2 and re.fullmatch(
            r"error: node \S+: the nodes reached 10\.77\.0\.1:\d+ but could not exchange data with each other "
            r"within 5 s \(.*\): each node is reached at the address its own name resolves to \(.*\), or of the "
            r"interface GLOO_SOCKET_IFNAME names: check that these addresses are reachable between the nodes", line), line
