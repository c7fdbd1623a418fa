"""Docker credential helpers: `docker-credential-<name> get`, as containers/image runs them.

The protocol (docker-credential-helpers): the registry's host on stdin; on
stdout `{"ServerURL": ..., "Username": ..., "Secret": ...}`. A Username of
"<token>" means Secret is an identity token (OAuth2 refresh token). A helper
that knows nothing for the host says "credentials not found in native
keychain" and exits non-zero: that is an answer (no credentials), not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import Sequence

from services.imaged.auth import Credentials
from shared.errors import FailedPrecondition, Unavailable

PREFIX = "docker-credential-"
_NOT_FOUND = "credentials not found in native keychain"
_IDENTITY_TOKEN_USER = "<token>"
_OUTPUT_LIMIT = 64 * 1024


def find_helper(name: str, dirs: Sequence[str]) -> str:
    """The helper's executable: in `dirs` when given (imaged.credential_helper_dirs), else on PATH."""
    program = PREFIX + name
    found = shutil.which(program, path=os.pathsep.join(dirs) if dirs else None)
    if found is None:
        where = ", ".join(dirs) if dirs else "PATH"
        raise FailedPrecondition(f"credential helper {program} not found in {where}")
    return found


def parse_helper_output(program: str, stdout: bytes) -> Credentials | None:
    try:
        data = json.loads(stdout)
    except ValueError:
        raise FailedPrecondition(f"credential helper {program} answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise FailedPrecondition(f"credential helper {program} answered JSON that is not an object")
    username, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    if username == _IDENTITY_TOKEN_USER:
        return Credentials(identity_token=secret) if secret else None
    creds = Credentials(username, secret)
    return None if creds == Credentials() else creds


async def helper_credentials(name: str, host: str, dirs: Sequence[str], timeout: float) -> Credentials | None:
    """Ask helper `name` for `host`'s credentials; None when it has none."""
    program = PREFIX + name
    executable = find_helper(name, dirs)
    proc = await asyncio.create_subprocess_exec(
        executable, "get", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Its own process group, so a helper that hangs is ended with whatever it started.
        start_new_session=True)
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate(host.encode())
    except TimeoutError:
        raise Unavailable(f"credential helper {program} did not answer for {host} within {timeout:g}s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.returncode != 0:
        said = (stdout + stderr)[:_OUTPUT_LIMIT].decode(errors="replace").strip()
        if _NOT_FOUND in said:
            return None
        raise Unavailable(f"credential helper {program} failed for {host} (exit {proc.returncode}): {said}")
    return parse_helper_output(program, stdout[:_OUTPUT_LIMIT])
