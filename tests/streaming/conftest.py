"""A criplex with busybox pulled, for streaming sessions against real containers (runc, conmon, netns).

crictl v1.26.1 is used as an extra check where it is installed (/tmp/bin/crictl, or
CRIPLEX_CRICTL); the Python client in tests/support/spdy_client.py covers the same ground
everywhere else.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pods.conftest import pod, pods  # noqa: F401 - the same fixtures, one criplex per module
from tests.support.pods import Pods

CRICTL = Path(os.environ.get("CRIPLEX_CRICTL", "/tmp/bin/crictl"))


@pytest.fixture
def crictl(pods: Pods) -> Iterator[list[str]]:  # noqa: F811 - the imported fixture, requested
    if not CRICTL.is_file():
        pytest.skip(f"crictl v1.26.1 is not installed at {CRICTL} (set CRIPLEX_CRICTL); the Python client "
                    "tests cover the same sessions")
    yield [str(CRICTL), "--runtime-endpoint", f"unix://{pods.run.socket}", "--timeout", "30s"]


def run_crictl(crictl: list[str], *args: str, input: bytes | None = None, timeout: float = 60
               ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*crictl, *args], input=input, capture_output=True, timeout=timeout)


def size_poll(height: int, width: int) -> bytes:
    """Shell input that prints `size:<rows> <cols>` once the terminal has that size (or after ~10 s).

    With a tty, the command can start before the size reaches its console: `runc exec -t` copies
    it after starting the process, and conmon applies a resize independently of stdin. So the
    test asks until the answer is right, and asserts on what the shell finally prints.
    """
    return (f'for i in $(seq 100); do s=$(busybox stty size 2>/dev/null); [ "$s" = "{height} {width}" ] && break; '
            f'sleep 0.1; done; echo "size:$s"\n').encode()
