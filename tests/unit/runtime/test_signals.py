"""Stop signals: recorded once, repeats from launchers are the same request, a later second Ctrl-C exits at once."""

import os
import signal
import subprocess
import sys

from harness.runtime.signals import StopRequest


def test_a_stop_signal_is_recorded_and_repeats_from_launchers_are_the_same_request():
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. torchrun forwarding the SIGTERM that SLURM sent to all
        os.kill(os.getpid(), signal.SIGINT)  # a forwarded Ctrl-C right after: still the same request
        assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM" and stop.exit_code == 143
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_ctrl_c_later_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from harness.runtime.signals import StopRequest\n"
        "stop = StopRequest().install()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "assert stop.signum == signal.SIGINT\n"
        "time.sleep(2.5)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(5)\n"
        "print('still alive')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGINT and "still alive" not in result.stdout
