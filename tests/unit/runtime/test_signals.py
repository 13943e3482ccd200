"""Stop signals: outside the loop a signal stops at once; inside it, it is recorded once and repeats from launchers
are the same request; a later second Ctrl-C exits at once."""

import os
import signal
import subprocess
import sys

import pytest

from harness.runtime.signals import StopRequest, TrainingInterrupted


def test_in_the_loop_a_stop_signal_is_recorded_and_repeats_from_launchers_are_the_same_request():
    stop = StopRequest().install()
    try:
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. torchrun forwarding the SIGTERM that SLURM sent to all
            os.kill(os.getpid(), signal.SIGINT)  # a forwarded Ctrl-C right after: still the same request
        assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM" and stop.exit_code == 143
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_outside_the_loop_a_stop_signal_stops_at_once_and_after_the_run_nothing(signum):
    stop = StopRequest().install()
    try:
        with pytest.raises(TrainingInterrupted) as stopped:
            os.kill(os.getpid(), signum)
        assert (stopped.value.exit_code, stopped.value.together) == (128 + signum, False)
        finished = StopRequest().install()
        finished.finished()
        os.kill(os.getpid(), signum)  # the run has completed: recorded, nothing more
        assert finished.signum == signum
        finished.uninstall()
    finally:
        stop.uninstall()


def test_a_second_ctrl_c_later_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from harness.runtime.signals import StopRequest\n"
        "stop = StopRequest().install()\n"
        "with stop.deferred():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.signum == signal.SIGINT\n"
        "    time.sleep(2.5)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "    print('still alive')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGINT and "still alive" not in result.stdout
