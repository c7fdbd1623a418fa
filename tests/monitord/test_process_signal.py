"""Stop signals by name or number, and a pidfd's view of whether a process has ended."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest

from services.monitord.process_signal import ProcessHandle, signal_number
from shared.errors import InvalidArgument
from tests.support.runtime import wait_for


@pytest.mark.parametrize(("name", "number"), [
    ("SIGTERM", signal.SIGTERM), ("term", signal.SIGTERM), ("SIGQUIT", signal.SIGQUIT), ("9", 9),
    ("37", 37), ("SIGRTMIN", signal.SIGRTMIN), ("SIGRTMIN+3", signal.SIGRTMIN + 3),
    ("RTMAX-1", signal.SIGRTMAX - 1), (" sigwinch ", signal.SIGWINCH),
])
def test_stop_signals_as_images_and_pods_name_them(name: str, number: int) -> None:
    assert signal_number(name) == number


@pytest.mark.parametrize("name", ["SIGNOPE", "", "SIG"])
def test_an_unknown_stop_signal_is_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument):
        signal_number(name)


def test_an_ended_process_is_seen_ended_at_once_even_with_no_time_to_wait() -> None:
    """A pidfd reader and a zero timeout fall due in the same loop iteration: the answer must not
    depend on which of the two runs first (StopContainer asks exactly this once conmon is gone)."""
    child = subprocess.Popen(["true"])
    try:
        with ProcessHandle(child.pid) as process:
            # The exit, not its reaping: the child stays a zombie meanwhile.
            wait_for(process.ended, 10, "the child to exit", interval=0.001)
            assert all(asyncio.run(process.wait_gone(0)) for _ in range(20))
    finally:
        child.wait()


def test_a_running_process_is_not_gone_until_it_ends() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        with ProcessHandle(child.pid) as process:
            assert not process.ended()
            assert asyncio.run(process.wait_gone(0.05)) is False
            child.kill()
            assert asyncio.run(process.wait_gone(10)) is True
    finally:
        child.kill()
        child.wait()
