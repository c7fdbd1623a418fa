"""The seam where CNI plugins attach a pod's network namespace, and netd's CNI runner behind it.

`PluginChain` runs a network's plugins as the CNI spec says (1.0.0, and 0.3.x/0.4.0
configs): ADD in order, each getting the previous result as `prevResult`; DEL in
reverse, with the cached result; CHECK in order, with it. netd's own code rather than
a wrapper of libcni: the spec is small, and this keeps the pod path down to the
plugins' own process starts.

What the steps leave if netd dies at any of them is in networks.py; here:

- the network config's copy is kept (once per config) before the first ADD with it;
- the pod's attempt (config, CNI_ARGS, runtimeConfig) is cached before the chain runs,
  and again with the result right after it succeeded, each in one atomic write;
- a failed ADD is rolled back at once by a DEL of the whole chain (`_roll_back`);
- DEL uses the cached config and result; without a result, the record's copy of the
  config, without prevResult (the spec allows it); every plugin's DEL is tried even
  when one fails (the first failure is reported), so one broken plugin cannot leak
  the others' veths and leases; and then no host link may lead into the namespace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from services.netd.cni_cache import CachedAttachment, CniCache
from services.netd.cni_conf import NetworkConfig, parse_network, plugin_finder, version_at_least
from services.netd.cni_exec import IFNAME, Invocation, PluginFailed, plugin_env, run_plugin
from services.netd.cni_result import pod_ips
from services.netd.cni_runtime import capability_args, cni_args, plugin_stdin
from services.netd.host_links import remove_links_into
from shared.errors import CriplexError, FailedPrecondition
from shared.nsfs import is_pinned
from shared.schema.netd import CreateNetworkRequest, PodNetwork
from shared.tracing import Tracing

log = logging.getLogger(__name__)

# Set on the exception of a failed ADD whose rollback could not DEL everything.
LEFT_BEHIND = "criplex_cni_left_behind"


def left_behind(exc: BaseException) -> bool:
    """Whether a failed `add` may have left attachments that a later DEL must remove."""
    return bool(getattr(exc, LEFT_BEHIND, False))


@dataclass(frozen=True)
class AttachPlan:
    """Everything an ADD will use, settled before anything is made (bad input fails early)."""

    network: NetworkConfig | None  # None: the namespace keeps its loopback only
    cni_args: str = ""
    capability_args: dict[str, Any] | None = None


@dataclass(frozen=True)
class Attachment:
    """What attaching a netns produced: the pod's addresses (primary first) and its interface."""

    ips: tuple[str, ...] = ()
    interface: str = ""
    result: dict[str, Any] | None = None  # the chain's final CNI result, for `commit`


class CniRunner(Protocol):
    def plan(self, request: CreateNetworkRequest) -> AttachPlan:
        """The network and arguments the pod will get; raises before anything is made."""

    async def prepare(self, plan: AttachPlan, sandbox_id: str) -> None:
        """Make what a DEL after a crash mid-ADD needs durable (the config and the arguments);
        may run alongside the record and the namespace, and must finish before `add`."""

    async def add(self, plan: AttachPlan, sandbox_id: str, netns: Path) -> Attachment:
        """Attach the freshly made `netns` (CNI ADD); called once the namespace is pinned,
        the record names `plan.network` and `prepare` is done. A failed ADD is rolled back."""

    async def commit(self, plan: AttachPlan, sandbox_id: str, attachment: Attachment) -> None:
        """Keep the ADD's result for a later DEL (libcni's cache)."""

    async def delete(self, network: PodNetwork) -> None:
        """Detach (CNI DEL) before the namespace is removed; must tolerate a half-made or gone netns."""

    async def detach(self, network: PodNetwork) -> None:
        """`delete` without forgetting the cached result (see `forget`)."""

    async def forget(self, network: PodNetwork) -> None:
        """Drop what `add` cached for a network `detach` removed."""

    def attached(self, network: PodNetwork) -> bool:
        """Whether the recorded network's ADD finished (False: netd died during it)."""

    async def recover(self, networks: list[PodNetwork], netns_dir: Path) -> None:
        """At start, before serving: undo ADDs a crash interrupted, and attachments nobody records."""


class LoopbackOnly:
    """No CNI: the namespace keeps only its loopback, which nsfs brought up."""

    def plan(self, request: CreateNetworkRequest) -> AttachPlan:
        return AttachPlan(None)

    async def prepare(self, plan: AttachPlan, sandbox_id: str) -> None:
        return

    async def add(self, plan: AttachPlan, sandbox_id: str, netns: Path) -> Attachment:
        return Attachment()

    async def commit(self, plan: AttachPlan, sandbox_id: str, attachment: Attachment) -> None:
        return

    async def delete(self, network: PodNetwork) -> None:
        return

    async def detach(self, network: PodNetwork) -> None:
        return

    async def forget(self, network: PodNetwork) -> None:
        return

    def attached(self, network: PodNetwork) -> bool:
        return True

    async def recover(self, networks: list[PodNetwork], netns_dir: Path) -> None:
        return


class PluginChain:
    """Runs the configured network's plugins for each pod."""

    def __init__(self, cache: CniCache, current: Callable[[], NetworkConfig], pod_cidr: Callable[[], str],
                 bin_dirs: tuple[str, ...], timeout: float, env: dict[str, str], tracing: Tracing | None = None
                 ) -> None:
        self._cache = cache
        self._tracing = tracing
        self._current = current  # the readiness watch's parse; raises when there is none
        self._pod_cidr = pod_cidr
        self._bin_dirs = bin_dirs
        self._cni_path = ":".join(bin_dirs)
        self._timeout = timeout
        self._env = env

    def plan(self, request: CreateNetworkRequest) -> AttachPlan:
        network = self._current()
        return AttachPlan(network, cni_args(request), capability_args(request, self._pod_cidr()))

    def _attempt(self, plan: AttachPlan, sandbox_id: str) -> CachedAttachment:
        assert plan.network is not None
        return CachedAttachment(plan.network.name, sandbox_id, IFNAME, plan.network.raw, plan.cni_args,
                                plan.capability_args or {}, None)

    async def prepare(self, plan: AttachPlan, sandbox_id: str) -> None:
        network = plan.network
        if network is None:
            return
        await asyncio.gather(self._cache.keep_config(network.digest, network.raw),
                             self._cache.put_result(self._attempt(plan, sandbox_id)))

    async def add(self, plan: AttachPlan, sandbox_id: str, netns: Path) -> Attachment:
        network = plan.network
        if network is None:
            return Attachment()
        capabilities = plan.capability_args or {}
        invocation = Invocation("ADD", sandbox_id, str(netns), plan.cni_args, self._cni_path, self._timeout)
        env = plugin_env(invocation, self._env)
        result: dict[str, Any] | None = None
        done = 0  # how many plugins' ADD succeeded
        try:
            for plugin in network.plugins:
                stdin = plugin_stdin(network, plugin, capabilities, result)
                result = await run_plugin(plugin.type, plugin.path, invocation, env, stdin, self._tracing) or result
                done += 1
        except BaseException as exc:
            await self._roll_back(network, sandbox_id, netns, plan, done, exc)
            raise
        final = result or {}
        return Attachment(pod_ips(final, IFNAME), IFNAME, final)

    async def commit(self, plan: AttachPlan, sandbox_id: str, attachment: Attachment) -> None:
        if plan.network is not None:
            await self._cache.put_result(replace(self._attempt(plan, sandbox_id), result=attachment.result or {}))

    async def _roll_back(self, network: NetworkConfig, sandbox_id: str, netns: Path, plan: AttachPlan, failing: int,
                         failure: BaseException) -> None:
        """DEL the whole chain after a failed ADD (CNI spec: the runtime cleans up with DEL).

        The plugin whose ADD failed, and those after it, are asked too (they may have made
        part of their work), but their DEL failing is not held against the rollback: the
        config that failed an ADD usually fails its DEL the same way, forever. A plugin
        whose ADD succeeded must DEL cleanly; if one does not, `failure` is marked as
        leaving something behind, and netd keeps the record and the pin for a later DEL."""
        invocation = Invocation("DEL", sandbox_id, str(netns), plan.cni_args, self._cni_path, self._timeout)
        try:
            await self._del_chain(network, invocation, plan.capability_args or {}, None, tolerate_from=failing)
        except PluginFailed as exc:
            log.error("sandbox %s: rolling back a failed ADD: %s", sandbox_id, exc)
            setattr(failure, LEFT_BEHIND, True)
            return
        await self._cache.drop_result(network.name, sandbox_id, IFNAME)

    async def check(self, network: PodNetwork) -> None:
        """CHECK the pod's attachment (CNI 0.4.0+); PluginFailed names what is wrong."""
        cached = self._cache.result(network.cni_network, network.sandbox_id, IFNAME)
        if cached is None or cached.result is None:
            raise FailedPrecondition(f"sandbox {network.sandbox_id}: no CNI result to CHECK against")
        config = parse_network(cached.config, "the CNI cache", plugin_finder(self._bin_dirs))
        if not version_at_least(config.cni_version, "0.4.0"):
            raise FailedPrecondition(f"network {config.name}: CHECK needs cniVersion 0.4.0 or later, "
                                     f"not {config.cni_version}")
        if config.disable_check:
            return
        netns = network.netns_path if is_pinned(Path(network.netns_path)) else ""
        if not netns:
            raise FailedPrecondition(f"sandbox {network.sandbox_id}: network namespace is gone")
        invocation = Invocation("CHECK", network.sandbox_id, netns, cached.cni_args, self._cni_path, self._timeout)
        env = plugin_env(invocation, self._env)
        for plugin in config.plugins:
            stdin = plugin_stdin(config, plugin, cached.capability_args, cached.result)
            await run_plugin(plugin.type, plugin.path, invocation, env, stdin, self._tracing)

    async def delete(self, network: PodNetwork) -> None:
        await self.detach(network)
        await self.forget(network)

    async def forget(self, network: PodNetwork) -> None:
        """Drop the cached result of a network that `detach` removed."""
        if network.cni_network:
            await self._cache.drop_result(network.cni_network, network.sandbox_id, IFNAME)

    async def detach(self, network: PodNetwork) -> None:
        """CNI DEL through the chain, with the cached result when there is one."""
        if not network.cni_network:
            return  # attached with no CNI network (older records, or loopback only)
        cached = self._cache.result(network.cni_network, network.sandbox_id, IFNAME)
        if cached is not None:
            raw, args, capabilities, prev = cached.config, cached.cni_args, cached.capability_args, cached.result
        else:
            recorded = self._cache.config(network.cni_config)
            if recorded is None:
                # The record was written, but netd died before the config's copy: no ADD ran.
                log.warning("sandbox %s: no copy of network config %s; nothing to DEL",
                            network.sandbox_id, network.cni_config)
                return
            args = f"IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={network.sandbox_id}"
            raw, capabilities, prev = recorded, {}, None
        config = self._config_for(raw)
        pinned = is_pinned(Path(network.netns_path))
        # CNI spec: for DEL, CNI_NETNS may be empty when the namespace is gone; a path that
        # is no namespace any more (an unmounted pin's file) would make plugins fail.
        invocation = Invocation("DEL", network.sandbox_id, network.netns_path if pinned else "", args,
                                self._cni_path, self._timeout)
        await self._del_chain(config, invocation, capabilities, prev)
        if (cached is None or cached.result is None) and pinned:
            await remove_links_into(Path(network.netns_path))

    async def _del_chain(self, config: NetworkConfig, invocation: Invocation, capabilities: dict[str, Any],
                         prev: dict[str, Any] | None, tolerate_from: int | None = None) -> None:
        """DEL every plugin in reverse order, each tried even when another failed; raises the first
        failure, except from the plugins at index `tolerate_from` and after."""
        env = plugin_env(invocation, self._env)
        if not version_at_least(config.cni_version, "0.4.0"):
            prev = None  # before 0.4.0, DEL gets no prevResult (libcni's rule)
        first_failure: PluginFailed | None = None
        for index in range(len(config.plugins) - 1, -1, -1):
            plugin = config.plugins[index]
            try:
                await run_plugin(plugin.type, plugin.path, invocation, env,
                                 plugin_stdin(config, plugin, capabilities, prev), self._tracing)
            except PluginFailed as exc:
                log.warning("sandbox %s: %s", invocation.container_id, exc)
                if tolerate_from is None or index < tolerate_from:
                    first_failure = first_failure or exc
        if first_failure is not None:
            raise first_failure

    def attached(self, network: PodNetwork) -> bool:
        if not network.cni_network:
            return True
        cached = self._cache.result(network.cni_network, network.sandbox_id, IFNAME)
        return cached is not None and cached.result is not None

    async def recover(self, networks: list[PodNetwork], netns_dir: Path) -> None:
        await asyncio.to_thread(self._cache.load)
        for network in networks:
            if not self.attached(network):
                log.info("sandbox %s: undoing the CNI ADD a restart interrupted", network.sandbox_id)
                await self._delete_logged(network)
        recorded = {(n.cni_network, n.sandbox_id) for n in networks}
        for cached in self._cache.results():
            if (cached.network_name, cached.container_id) not in recorded:
                # Only a record deleted by hand leaves this; its pin, if any, went at load.
                log.warning("sandbox %s: CNI attachment without a record; DEL", cached.container_id)
                await self._delete_logged(PodNetwork(cached.container_id, str(netns_dir / cached.container_id),
                                                     cni_network=cached.network_name))
        self._cache.drop_configs_except({n.cni_config for n in networks if n.cni_config})

    async def _delete_logged(self, network: PodNetwork) -> None:
        try:
            await self.delete(network)
        except CriplexError as exc:
            log.error("sandbox %s: CNI DEL failed, left for the next removal: %s", network.sandbox_id, exc)

    def _config_for(self, raw: bytes) -> NetworkConfig:
        try:
            current = self._current()
        except FailedPrecondition:
            current = None
        if current is not None and current.raw == raw:
            return current  # the common case: parsed and resolved by the watch already
        return parse_network(raw, "the CNI cache", plugin_finder(self._bin_dirs))
