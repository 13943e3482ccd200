"""The sbatch scripts' own logic without a cluster, in seconds: syntax, refusals, process counts and launch
configs from the allocation (the scripts under a real SLURM: tests/e2e/test_slurm.py)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPTS = sorted((REPO / "slurm").glob("*.sh"))


def bash(command: str, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", "-c", command], cwd=REPO, env={**env, **variables}, capture_output=True, text=True)


def in_job(command: str, **variables: str) -> subprocess.CompletedProcess:
    return bash(command, SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=str(REPO), **variables)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    assert bash(f"bash -n {script}").returncode == 0


def test_batch_scripts_set_their_defaults_for_sbatch():
    for name in ("train.sh", "train_multinode.sh", "sweep.sh", "infer.sh"):
        head = (REPO / "slurm" / name).read_text()
        for option in ("--signal=B:USR1@", "--requeue", "--open-mode=append", "--output=slurm-%x-"):
            assert f"#SBATCH {option}" in head, f"{name}: {option}"


@pytest.mark.parametrize("command, message", [
    ("bash slurm/train.sh configs/digits.yaml", "train.sh: a batch script: submit it with sbatch"),
])
def test_outside_a_job_the_scripts_say_how_to_run_them(command, message):
    result = bash(command)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message}"


@pytest.mark.parametrize("command, message", [
    ("bash slurm/train.sh", "usage: sbatch slurm/train.sh CONFIG [section.key=value ...]"),
    ("bash slurm/train.sh configs/digits.yaml --run-name x", "--run-name: the job names its run"),
    ("bash slurm/train_multinode.sh configs/digits.yaml --output-dir=/x", "--output-dir=/x: use OUTPUT_DIR="),
    ("bash slurm/sweep.sh configs/digits.yaml sweeps/lr.yaml", "slurm/sweep.sh runs as a job array"),
    ("bash slurm/infer.sh configs", "configs: not a run directory (no config.yaml)"),
])
def test_mistakes_are_one_line_and_exit_2(command, message):
    result = in_job(command)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_sweep_task_outside_the_sweep_fails_before_training():
    result = in_job("bash slurm/sweep.sh configs/digits.yaml sweeps/lr.yaml", SLURM_ARRAY_TASK_ID="9",
                    SLURM_ARRAY_JOB_ID="70")
    assert result.returncode == 2 and "array task 9 is out of range: the sweep has 4 runs" in result.stderr


def test_the_repository_must_be_where_sbatch_ran():
    result = bash("bash slurm/train.sh configs/digits.yaml", SLURM_JOB_ID="77", SLURM_SUBMIT_DIR="/tmp")
    assert result.returncode == 2 and "slurm/common.sh not found: run sbatch from the repository root" in result.stderr


@pytest.mark.parametrize("variables, expected", [
    ({"SLURM_NTASKS": "1"}, "1 launch_configs/cpu.yaml 8"),
    ({"SLURM_NTASKS": "2"}, "2 launch_configs/cpu_ddp.yaml 4"),
    ({"SLURM_GPUS_ON_NODE": "1"}, "1 launch_configs/single_gpu.yaml 8"),
    ({"SLURM_GPUS_ON_NODE": "4", "SLURM_NTASKS": "1"}, "4 launch_configs/multi_gpu.yaml 2"),
    ({"PROCESSES": "3", "SLURM_NTASKS": "1"}, "3 launch_configs/cpu_ddp.yaml 2"),
])
def test_processes_launch_config_and_threads_follow_the_allocation(variables, expected):
    result = in_job('. slurm/common.sh; n=$(processes_per_node "${SLURM_NTASKS:-1}"); '
                    'echo "$n $(default_launch_config "$n") $(threads_per_process "$n")"',
                    SLURM_CPUS_ON_NODE="8", **variables)
    assert result.stdout.strip() == expected, result.stderr


def test_a_job_names_its_run_after_the_job_and_an_array_task_after_its_task():
    show = '. slurm/common.sh; training_args train.sh c.yaml a.b=1; echo "$RUN_NAME ${TRAIN_ARGS[*]}"'
    assert in_job(show).stdout.strip() == \
        "{name}-j77 harness/train.py --config c.yaml --output-dir runs --run-name {name}-j77 a.b=1"
    assert in_job(show, SLURM_ARRAY_JOB_ID="70", SLURM_ARRAY_TASK_ID="3", RUN_NAME="x-{name}",
                  OUTPUT_DIR="/o").stdout.strip().startswith("x-{name} harness/train.py --config c.yaml --output-dir /o")
    assert in_job('. slurm/common.sh; job_tag', SLURM_ARRAY_JOB_ID="70", SLURM_ARRAY_TASK_ID="3").stdout == "70_3\n"


SLOW_SAVE = """
import os, pathlib, sys, time
from harness.runtime.signals import StopRequest

stop = StopRequest().install()  # as the training command does
with stop.deferred():  # and its loop, until the save
    pathlib.Path(sys.argv[1]).write_text(str(os.getpgid(0)))
    while stop.signum is None:
        time.sleep(0.05)
    time.sleep(8)  # a checkpoint that takes a while
    pathlib.Path(sys.argv[1]).write_text("saved")
"""


def test_a_launcher_never_sees_the_stop_signal_that_would_cut_a_save_short(tmp_path):
    """SLURM signals every process of the job. `accelerate launch` answers a SIGTERM by stopping its child and
    killing it 5 s later; under supervise it never gets one, and the training takes the time its save needs."""
    (tmp_path / "slow_save.py").write_text(SLOW_SAVE)
    out = tmp_path / "out"
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    job = subprocess.Popen(["bash", "-c", f'. slurm/common.sh; supervise accelerate launch -q --config_file '
                            f'launch_configs/cpu.yaml {tmp_path / "slow_save.py"} {out}; echo "rc $SUPERVISED_RC"'],
                           cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out.exists() and out.read_text().isdigit()) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(int(out.read_text()), signal.SIGTERM)  # what slurmstepd does to every process of the step
    assert job.communicate(timeout=60)[0].strip() == "rc 0" and out.read_text() == "saved"


def test_a_site_file_is_sourced_from_the_repository_before_its_venv_and_a_failing_one_is_one_line(tmp_path):
    """slurm/site.sh, the cluster's own additions (modules, variables, a venv of its own), is sourced by every
    script once it is in the repository, before the repository's .venv would be activated."""
    repo, venv = tmp_path / "repo", tmp_path / "site-venv"
    (repo / "harness").mkdir(parents=True)
    (repo / "harness" / "train.py").touch()
    shutil.copytree(REPO / "slurm", repo / "slurm")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV={venv}\nexport PATH="{venv}/bin:$PATH"\n')
    (venv / "bin" / "accelerate").write_text("#!/bin/sh\n")
    (venv / "bin" / "accelerate").chmod(0o755)
    (repo / "slurm" / "site.sh").write_text(f"export SITE_MODULES=loaded\n. {venv}/bin/activate\n")
    check = ". slurm/common.sh && enter_repo && echo $PWD $SITE_MODULES $VIRTUAL_ENV $(command -v accelerate)"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    result = subprocess.run(["bash", "-c", check], cwd=REPO, capture_output=True, text=True,
                            env={**env, "SLURM_JOB_ID": "77", "HARNESS_DIR": str(repo)})
    assert result.returncode == 0 and result.stdout.split() == [str(repo), "loaded", str(venv),
                                                                str(venv / "bin" / "accelerate")], result.stderr
    (repo / "slurm" / "site.sh").write_text("module load no-such-module 2>/dev/null || false\n")
    failed = in_job(check, HARNESS_DIR=str(repo))
    assert failed.returncode == 2 and failed.stderr.strip() == (
        "error: slurm/site.sh failed (exit status 1): fix it, or move it away to run without it")


@pytest.mark.parametrize("names, message", [
    ("localhost some-node", "node some-node: the name localhost resolves to 127.0.0.1, a loopback address the "
                            "other nodes cannot reach: map localhost to its network address in /etc/hosts or DNS"),
    ("no-such-node.invalid localhost", "node localhost: the name no-such-node.invalid does not resolve here: add it "
                                       "to /etc/hosts or DNS"),
])
def test_a_main_node_name_that_resolves_to_loopback_or_nothing_ends_a_multi_node_launch_in_one_line(names, message):
    """Before a launch across nodes (slurm/launch_machine.sh), each node checks the names the others will use."""
    result = in_job(f". slurm/common.sh; check_addresses {names}")
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message}", result.stderr


def test_a_node_whose_own_name_is_loopback_is_named_with_the_way_out():
    """gloo binds where the node's own name resolves: a loopback address there is refused too, unless
    GLOO_SOCKET_IFNAME names the interface to use."""
    result = in_job(". slurm/common.sh; check_addresses 10.77.0.11 localhost")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: node localhost: the name localhost resolves to 127.0.0.1, a loopback address the other nodes cannot "
        "reach: map localhost to its network address in /etc/hosts or DNS, or set GLOO_SOCKET_IFNAME to this "
        "node's interface (slurm/site.sh)"), result.stderr
    assert in_job(". slurm/common.sh; check_addresses 10.77.0.11 localhost", GLOO_SOCKET_IFNAME="eth0").returncode == 0


@pytest.mark.parametrize("nodelist", ["node[01-04,07],gpu1", "rack[1-2]-n[3,4]", "gpu-[009-011]", "n1,n2", "solo"])
def test_the_main_node_is_the_first_of_the_host_list_as_scontrol_expands_it(nodelist):
    """Read without scontrol (a container may lack it); scontrol expands host lists without a controller."""
    ours = in_job(f". slurm/common.sh; first_node '{nodelist}'").stdout.strip()
    if shutil.which("scontrol"):
        theirs = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                check=True).stdout.split()[0]
        assert ours == theirs
    assert ours == {"node[01-04,07],gpu1": "node01", "rack[1-2]-n[3,4]": "rack1-n3", "gpu-[009-011]": "gpu-009",
                    "n1,n2": "n1", "solo": "solo"}[nodelist]


def test_without_scontrol_a_requeue_says_how_to_continue_the_run(tmp_path):
    """Inside a container without SLURM's commands, the checkpointed run is named with the variables that
    continue it."""
    run = tmp_path / "runs" / "digits-j77"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    bare = tmp_path / "bin"  # the commands a container has: bash's and the coreutils, no scontrol
    bare.mkdir()
    for command in ("bash", "basename", "dirname", "date", "cat", "ls"):
        (bare / command).symlink_to(shutil.which(command))
    result = in_job(f"PATH={bare}; . slurm/common.sh; OUTPUT_DIR={tmp_path}/runs RUN_NAME='{{name}}-j77'; requeue")
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: cannot requeue job 77: scontrol is not on PATH here (a container without SLURM's commands?); the run "
        f"checkpointed in {run}: submit the job again with OUTPUT_DIR={tmp_path}/runs RUN_NAME=digits-j77 to continue "
        "it, or make scontrol available (slurm/site.sh)"), result.stderr


def preflight(rank: int, machines: int, port: int, host: str = "127.0.0.1", timeout: int = 20) -> subprocess.Popen:
    """``python harness/preflight.py`` as slurm/launch_machine.sh runs it on each node."""
    return subprocess.Popen([sys.executable, "harness/preflight.py", "--main-host", host, "--port",
                             str(port), "--machine-rank", str(rank), "--machines", str(machines), "--timeout",
                             str(timeout)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def error_lines(process: subprocess.Popen) -> tuple[int, list[str]]:
    _, stderr = process.communicate(timeout=120)
    return process.returncode, [line for line in stderr.splitlines() if line.startswith("error")]


@pytest.mark.slow
def test_the_preflight_passes_when_every_node_meets_every_other():
    port = free_port()
    nodes = [preflight(rank, 3, port) for rank in range(3)]
    assert [error_lines(node) for node in nodes] == [(0, [])] * 3


@pytest.mark.slow
def test_the_preflight_names_the_node_that_cannot_reach_the_main_node_and_the_machines_that_never_came():
    import socket

    node = socket.gethostname()
    port = free_port()
    alone = error_lines(preflight(1, 2, port, timeout=2))
    assert alone == (2, [f"error: node {node}: cannot reach the main node at 127.0.0.1:{port} within 2 s "
                         f"(DistNetworkError: The client socket has timed out after 2000ms while trying to connect to "
                         f"(127.0.0.1, {port}).): is 127.0.0.1 up, its name the address the nodes share, and the port "
                         "open between nodes?"])
    waiting = error_lines(preflight(0, 3, port, timeout=2))
    assert waiting == (2, [f"error: node {node}: machine(s) 1, 2 of 3 did not reach the main node at "
                           f"127.0.0.1:{port} within 2 s: their own lines say why (if they started at all)"])
