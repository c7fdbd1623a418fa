"""Signalling a container's init without a pid-reuse race: through a pidfd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal

from shared.errors import InvalidArgument


def signal_number(name: str) -> int:
    """"SIGTERM", "TERM", "15", "SIGRTMIN+3" -> the number."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    for base, number in (("SIGRTMIN", signal.SIGRTMIN), ("SIGRTMAX", signal.SIGRTMAX)):
        if text == base:
            return int(number)
        if text.startswith(base + "+") or text.startswith(base + "-"):
            offset = int(text[len(base):])
            return int(number) + offset
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise InvalidArgument(f"unknown signal {name!r}") from None


class ProcessHandle:
    """A pidfd on a process that is not our child: signals reach that process or nobody."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = -1
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                self._fd = os.pidfd_open(pid)

    @property
    def gone(self) -> bool:
        return self._fd < 0

    def send(self, signum: int) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._fd, signum)

    def ended(self) -> bool:
        """Whether the process has ended (its pidfd is readable), asked without waiting."""
        if self._fd < 0:
            return True
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(0))

    async def wait_gone(self, timeout: float) -> bool:
        """True once the process has ended (a pidfd turns readable), False after `timeout` seconds."""
        # Asked first: a reader and a timeout due in the same loop iteration would race.
        if self.ended():
            return True
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(self._fd, lambda: ended.done() or ended.set_result(None))
        try:
            async with asyncio.timeout(timeout):
                await ended
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ProcessHandle:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
