"""The OCI runtime command line (runc, crun): the calls monitord makes outside conmon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from shared.config import MonitordConfig
from shared.errors import Internal, InvalidArgument
from shared.tracing import Tracing

_GONE_MARKERS = ("does not exist", "not found", "no such file")


@dataclass(frozen=True)
class RuntimeResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def message(self) -> str:
        return (self.stderr or self.stdout).decode(errors="replace").strip()

    @property
    def container_gone(self) -> bool:
        return self.returncode != 0 and any(m in self.message.lower() for m in _GONE_MARKERS)


@dataclass(frozen=True)
class OciRuntime:
    handler: str
    path: str
    root: str
    tracing: Tracing | None = field(default=None, compare=False, repr=False)

    def argv(self, *args: str) -> list[str]:
        return [self.path, f"--root={self.root}", *args]

    def span(self, name: str) -> AbstractContextManager[object]:
        """A span for one runtime step (runc create under conmon, runc start) in `criplex trace`."""
        return self.tracing.span(name) if self.tracing is not None else contextlib.nullcontext()

    async def run(self, *args: str, stdin: bytes | None = None) -> RuntimeResult:
        with self.span(f"{os.path.basename(self.path)} {args[0]}"):
            return await self._run(*args, stdin=stdin)

    async def _run(self, *args: str, stdin: bytes | None = None) -> RuntimeResult:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate(stdin)
        except BaseException:
            # Cancelled (the call's deadline): do not leave a runc behind half-way.
            if proc.returncode is None:
                proc.kill()
                await asyncio.shield(proc.wait())
            raise
        assert proc.returncode is not None
        return RuntimeResult(proc.returncode, out, err)

    async def checked(self, *args: str, stdin: bytes | None = None) -> RuntimeResult:
        result = await self.run(*args, stdin=stdin)
        if result.returncode != 0:
            raise Internal(f"{os.path.basename(self.path)} {args[0]} failed: {result.message}")
        return result

    async def start(self, container_id: str) -> None:
        await self.checked("start", container_id)

    async def kill(self, container_id: str, signal: str = "KILL") -> None:
        result = await self.run("kill", container_id, signal)
        if result.returncode != 0 and not result.container_gone and "not running" not in result.message:
            raise Internal(f"{os.path.basename(self.path)} kill {container_id} {signal}: {result.message}")

    async def delete(self, container_id: str, force: bool = False) -> None:
        """Remove the runtime's state of a stopped container. `force` also kills a living one, by
        polling every 100 ms until it dies, so it is only for containers that never started."""
        result = await self.run("delete", *(["--force"] if force else []), container_id)
        if result.returncode != 0 and not result.container_gone:
            raise Internal(f"{os.path.basename(self.path)} delete {container_id}: {result.message}")

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """`runc state` as a dict; None when the runtime does not know the container."""
        result = await self.run("state", container_id)
        if result.returncode != 0:
            if result.container_gone:
                return None
            raise Internal(f"{os.path.basename(self.path)} state {container_id}: {result.message}")
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    async def pause(self, container_id: str) -> None:
        await self.checked("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self.checked("resume", container_id)

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        await self.checked("update", "--resources", "-", container_id, stdin=json.dumps(resources).encode())


class RuntimeHandlers:
    """The configured runtime handlers; the CRI's "" means the default one."""

    def __init__(self, config: MonitordConfig, run_dir: str, tracing: Tracing | None = None) -> None:
        self.default = config.default_runtime
        self._tracing = tracing
        self._runtimes = self._configured(config, run_dir, tracing)
        # Handlers a reload removed: refused for new pods, still used for the containers they run.
        self._retired: dict[str, OciRuntime] = {}

    @staticmethod
    def _configured(config: MonitordConfig, run_dir: str, tracing: Tracing | None) -> dict[str, OciRuntime]:
        return {name: OciRuntime(name, handler.path, config.runtime_root(name, run_dir), tracing)
                for name, handler in config.runtimes.items()}

    def reload(self, config: MonitordConfig, run_dir: str) -> None:
        """Take the handlers of a re-read configuration (SIGHUP)."""
        fresh = self._configured(config, run_dir, self._tracing)
        self._retired = {name: rt for name, rt in {**self._retired, **self._runtimes}.items() if name not in fresh}
        self._runtimes = fresh
        self.default = config.default_runtime

    def resolve(self, handler: str) -> str:
        name = handler or self.default
        if name not in self._runtimes:
            raise InvalidArgument(f"unknown runtime handler {name!r}; configured: {', '.join(sorted(self._runtimes))}")
        return name

    def get(self, handler: str) -> OciRuntime:
        return self._runtimes[self.resolve(handler)]

    def find(self, handler: str) -> OciRuntime | None:
        """The runtime of a stored record, or None when its handler was removed from the config."""
        name = handler or self.default
        return self._runtimes.get(name) or self._retired.get(name)
