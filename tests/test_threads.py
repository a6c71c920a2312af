"""The thread policy: free cores and passive waiting on a busy machine, nothing on an idle
one, and the user's own settings always win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from genmnist import threads
from genmnist.threads import apply_thread_policy, thread_settings


def test_an_idle_machine_or_an_unknown_load_is_left_alone():
    assert thread_settings(2, 0, {}) == {}
    assert thread_settings(8, None, {}) == {}


@pytest.mark.parametrize("cores,busy,threads_left", [(2, 1, "1"), (2, 5, "1"), (8, 3, "5")])
def test_a_busy_machine_gets_its_free_cores_and_passive_waiting(cores, busy, threads_left):
    assert thread_settings(cores, busy, {}) == {
        "OMP_NUM_THREADS": threads_left,
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def test_the_users_settings_win():
    assert thread_settings(2, 1, {"OMP_NUM_THREADS": "2"}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert thread_settings(2, 1, {"OMP_WAIT_POLICY": "ACTIVE"}) == {"OMP_NUM_THREADS": "1"}
    assert thread_settings(2, 1, {threads.OPT_OUT: "1"}) == {}
    assert thread_settings(2, 1, {threads.OPT_OUT: "0"}) != {}


def test_apply_sets_the_environment_it_is_given(monkeypatch):
    monkeypatch.setattr(threads, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "other_running_processes", lambda: 1)
    environ = {"PATH": "/bin"}
    assert apply_thread_policy(environ) == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    assert environ["OMP_NUM_THREADS"] == "3" and environ["PATH"] == "/bin"
    monkeypatch.setattr(threads, "other_running_processes", lambda: 0)
    environ = {}
    assert apply_thread_policy(environ) == {} and environ == {}


def test_running_processes_are_read_from_the_system():
    count = threads.other_running_processes(readings=2, interval=0.0)
    if sys.platform.startswith("linux"):
        assert isinstance(count, int) and count >= 0
    else:
        assert count is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/loadavg")
def test_the_command_line_sees_a_competing_process():
    """With a CPU-bound process beside it, the CLI runs torch on the free cores only."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        probe = (
            "import os\nfrom genmnist.cli.app import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
        env.pop(threads.OPT_OUT, None)
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
        ).stdout
        assert out.strip().splitlines()[-1] == "PASSIVE"
    finally:
        spinner.kill()
        spinner.wait()
