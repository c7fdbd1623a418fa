"""Running one CNI plugin: the environment and stdin the spec defines, a deadline, and its answer.

Plugins run as asyncio subprocesses (fork+exec: nng is not fork-safe, so never a bare
fork). stdin, stdout and stderr go through pipes read together (`communicate`), so a
plugin that writes a lot to stderr can never block on a full pipe while we wait for
stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Any

from services.netd.cni_result import parse_output, plugin_error
from shared.errors import Internal
from shared.tracing import Tracing

IFNAME = "eth0"


@dataclass(frozen=True)
class Invocation:
    """What is the same for every plugin of one chain run (CNI spec, "Parameters")."""

    command: str  # ADD | DEL | CHECK
    container_id: str
    netns: str  # empty for a DEL whose namespace is gone
    cni_args: str
    cni_path: str  # the bin dirs joined by ':'
    timeout: float


class PluginFailed(Internal):
    """A plugin answered with an error, timed out, or could not be run."""


def plugin_env(invocation: Invocation, base: dict[str, str]) -> dict[str, str]:
    # The host's environment goes through (plugins such as portmap run iptables from PATH),
    # minus any CNI_ variable of ours that must not leak into a plugin.
    env = {k: v for k, v in base.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=invocation.command, CNI_CONTAINERID=invocation.container_id,
               CNI_NETNS=invocation.netns, CNI_IFNAME=IFNAME, CNI_ARGS=invocation.cni_args,
               CNI_PATH=invocation.cni_path)
    return env


async def run_plugin(plugin_type: str, path: str, invocation: Invocation, env: dict[str, str],
                     stdin: bytes, tracing: Tracing | None = None) -> dict[str, Any] | None:
    """Run one plugin; its result (None when it printed none), or PluginFailed naming it.

    Each call is a span of its own (`cni <type> <command>`): CNI is where a slow pod start
    most often spends its time."""
    if tracing is None:
        return await _run_plugin(plugin_type, path, invocation, env, stdin)
    with tracing.span(f"cni {plugin_type} {invocation.command}"):
        return await _run_plugin(plugin_type, path, invocation, env, stdin)


async def _run_plugin(plugin_type: str, path: str, invocation: Invocation, env: dict[str, str],
                      stdin: bytes) -> dict[str, Any] | None:
    what = f"CNI plugin {plugin_type} {invocation.command}"
    try:
        proc = await asyncio.create_subprocess_exec(
            path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd="/")
    except OSError as exc:
        raise PluginFailed(f"{what}: cannot run {path}: {exc.strerror}") from exc
    try:
        async with asyncio.timeout(invocation.timeout):
            stdout, stderr = await proc.communicate(stdin)
    except TimeoutError:
        raise PluginFailed(f"{what}: no answer within {invocation.timeout:g} s; killed") from None
    finally:
        if proc.returncode is None:
            # Timed out or cancelled: a plugin left running would hold its locks (host-local's
            # lease dir, portmap's iptables) against the rollback that follows.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        raise PluginFailed(f"{what} failed: {plugin_error(stdout, stderr, proc.returncode)}")
    return parse_output(stdout)


def host_env() -> dict[str, str]:
    return dict(os.environ)
