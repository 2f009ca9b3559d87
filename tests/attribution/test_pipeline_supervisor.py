"""The consumer's pipeline supervisor passes a stop on to its pipeline process, whenever
the SIGTERM comes: CI once saw ``whoexec consume`` ignore SIGTERM for 30 s. A SIGTERM
that reached the supervisor while it forked the pipeline was never passed on, and one
passed on at once could reach the new process before Python's after-fork reset, which
drops it: the supervisor now tells its pipeline again each second until it exits."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from webhook.attribution import app as consumer_app
from webhook.stopflag import StopFlag


def run_supervisor_in_a_child(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> int:
    """Fork a process that runs the real supervisor, whose SIGTERM lands while
    ``os.fork()`` returns in it, and whose pipeline only stops when told; its pid."""
    test_child = os.fork()
    if test_child:
        return test_child
    code = 70
    try:
        os.setpgid(0, 0)  # the supervisor and its pipeline, killed together if it hangs
        real_fork = os.fork

        def fork_with_a_sigterm_on_return() -> int:
            pid = real_fork()
            if pid:
                os.kill(os.getpid(), signal.SIGTERM)  # runs the handler before `child = pid`
            return pid

        def pipeline_that_stops_when_told(
            _settings: Any, _use_stdout: bool, _heartbeat: Path, stop: StopFlag
        ) -> None:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            while not stop.wait(0.05):
                pass

        monkeypatch.setattr(consumer_app, "_run_pipeline_process", pipeline_that_stops_when_told)
        monkeypatch.setattr(os, "fork", fork_with_a_sigterm_on_return)
        code = consumer_app._supervise_pipeline(None, False, tmp_path / "alive", None)  # type: ignore[arg-type]
    finally:
        os._exit(code)


@pytest.mark.parametrize("attempt", range(10))  # the old code hung in most of them
def test_a_sigterm_that_comes_while_the_pipeline_is_forked_still_stops_it(
    monkeypatch, tmp_path, attempt
):
    supervisor = run_supervisor_in_a_child(monkeypatch, tmp_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(supervisor, os.WNOHANG)
        if done == supervisor:
            break
        time.sleep(0.05)  # polls for the exit; the wait is the deadline
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor, signal.SIGKILL)
        os.waitpid(supervisor, 0)
        pytest.fail("the supervisor never passed its SIGTERM on, and waited for ever")
    assert os.waitstatus_to_exitcode(status) == 0, "the pipeline stopped cleanly, when told"


def test_a_stop_flag_set_by_a_signal_handler_ends_the_main_thread_s_wait():
    flag = StopFlag()
    previous = signal.signal(signal.SIGALRM, lambda *_: flag.set())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert flag.wait(30) is True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_stop_flag_not_set_waits_out_its_timeout_and_says_so():
    flag = StopFlag()
    assert flag.wait(0.01) is False
    flag.set()
    assert flag.is_set() and flag.wait(0) is True


def test_a_stop_flag_waits_its_whole_timeout_in_slices_and_not_a_slice_more(monkeypatch):
    from webhook import stopflag

    now = [100.0]
    slept: list[float] = []

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return now[0]

        @staticmethod
        def sleep(seconds: float) -> None:
            assert 0 < seconds <= 1.0, f"a slice of {seconds} s"
            slept.append(seconds)
            now[0] += seconds

    monkeypatch.setattr(stopflag, "time", Clock)
    monkeypatch.setattr(stopflag, "SLICE_SECONDS", 1.0)
    assert StopFlag().wait(3.5) is False
    assert slept == [1.0, 1.0, 1.0, 0.5]
