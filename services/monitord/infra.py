"""The infra ("pause") container: what holds a pod's shared PID namespace.

A pod's network, IPC and UTS namespaces are pinned by bind mounts (sandboxes.py), but a PID
namespace ends with its init: nothing can pin it. So a pod whose containers share one
(NamespaceOption.pid = POD) gets a pause process as that namespace's PID 1, as CRI-O does
with drop_infra_ctr when NeedsInfra. It runs through the same conmon/runc path as the pod's
containers and is keyed by the sandbox ID (bundle, persist dir, exit file, runc state), yet
it is not a ContainerRecord: the kubelet never sees it, and its state is the sandbox record's
`infra_container_id` and `infra_pid`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

from services.monitord import spec
from services.monitord.conmon import ConmonLaunch, create_under_conmon
from services.monitord.layout import Layout
from services.monitord.oci_runtime import OciRuntime
from services.monitord.process_signal import ProcessHandle
from services.monitord.spec.inputs import HostFacts, SpecInputs
from shared.config import MonitordConfig
from shared.cri import api_pb2
from shared.errors import FailedPrecondition, Internal
from shared.schema.imaged import ImageRecord
from shared.schema.monitord import SandboxRecord
from shared.state import write_atomic

log = logging.getLogger(__name__)

INFRA_NAME = "POD"  # the container name the kubelet and CRI-O give the infra container
# conmon writes the exit file within milliseconds of a SIGKILL; past this it is presumed dead.
_KILL_WAIT = 10.0


def needs_infra(config: api_pb2.PodSandboxConfig) -> bool:
    """Only a PID namespace shared by the pod needs a process to hold it. POD is the proto's
    zero value, so a config that never set the option (crictl's, critest's) needs one too."""
    return config.linux.security_context.namespace_options.pid == api_pb2.POD


def infra_container_config(sandbox_config: api_pb2.PodSandboxConfig, image: ImageRecord) -> api_pb2.ContainerConfig:
    """The infra container as if the kubelet had asked for it: the pause image's own command,
    its own new PID namespace (the one the pod's containers then join), no capabilities, no
    new privileges, a read-only rootfs, and the pod's user and seccomp choice."""
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=INFRA_NAME, attempt=sandbox_config.metadata.attempt),
        image=api_pb2.ImageSpec(image=image.repo_tags[0] if image.repo_tags else image.id),
    )
    pod = sandbox_config.linux.security_context
    sc = config.linux.security_context
    sc.namespace_options.pid = api_pb2.CONTAINER
    sc.capabilities.drop_capabilities.append("ALL")
    sc.no_new_privs = True
    sc.readonly_rootfs = True
    if pod.HasField("run_as_user"):
        sc.run_as_user.value = pod.run_as_user.value
    if pod.HasField("run_as_group"):
        sc.run_as_group.value = pod.run_as_group.value
    if pod.HasField("seccomp"):
        sc.seccomp.CopyFrom(pod.seccomp)
    elif pod.seccomp_profile_path:
        sc.seccomp_profile_path = pod.seccomp_profile_path
    return config


def infra_spec_inputs(sandbox: SandboxRecord, sandbox_config: api_pb2.PodSandboxConfig, rootfs: str,
                      image: ImageRecord, host: HostFacts) -> SpecInputs:
    """What `spec.generate` makes the infra container's config.json from; keyed by the sandbox ID."""
    return SpecInputs(sandbox.id, sandbox, sandbox_config, infra_container_config(sandbox_config, image), image,
                      rootfs, host, extra_annotations={"io.kubernetes.cri.container-type": "sandbox"})


class InfraContainers:
    """Run, kill, remove and check the infra containers of pods; one per pod at most."""

    def __init__(self, layout: Layout, config: MonitordConfig, host: HostFacts) -> None:
        self._layout = layout
        self._config = config
        self._host = host
        self._exited: dict[str, asyncio.Event] = {}

    async def run(self, sandbox: SandboxRecord, sandbox_config: api_pb2.PodSandboxConfig, rootfs: str,
                  image: ImageRecord, runtime: OciRuntime) -> int:
        """Create and start the pod's infra container; its pid. On failure nothing of it is left."""
        inputs = infra_spec_inputs(sandbox, sandbox_config, rootfs, image, self._host)
        bundle = self._layout.bundle(sandbox.id)
        try:
            generated = await asyncio.to_thread(spec.generate, inputs)
            await asyncio.to_thread(self._write_bundle, sandbox.id, generated.spec)
            pid = await create_under_conmon(self._config.conmon, runtime, ConmonLaunch(
                container_id=sandbox.id, name=sandbox.name, bundle=bundle,
                persist_dir=self._layout.persist(sandbox.id), exit_dir=self._layout.exits,
                socket_dir=self._layout.sockets, log_path=str(bundle / "infra.log"),
                log_size_max=self._config.log_size_max,
                systemd_cgroup=self._config.cgroup_manager == "systemd",
            ), self._config.create_timeout)
            await runtime.start(sandbox.id)
        except BaseException:
            await asyncio.shield(self.remove(sandbox.id, runtime))
            raise
        return pid

    def _write_bundle(self, sandbox_id: str, oci_spec: dict[str, object]) -> None:
        bundle = self._layout.bundle(sandbox_id)
        bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._layout.persist(sandbox_id).mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(bundle / "config.json", json.dumps(oci_spec, indent=1).encode())

    def exited(self, sandbox_id: str) -> None:
        """conmon reported the infra container's exit: wake a kill waiting for it."""
        event = self._exited.pop(sandbox_id, None)
        if event is not None:
            event.set()

    async def kill(self, sandbox_id: str, runtime: OciRuntime) -> None:
        """SIGKILL the infra container and wait for its exit. Every process of the pod's PID
        namespace dies with it, which is fine: its containers were stopped first."""
        exited = self._exited.setdefault(sandbox_id, asyncio.Event())
        state = await runtime.state(sandbox_id)
        if state is None or state.get("status") == "stopped":
            self._exited.pop(sandbox_id, None)
            return
        # Opened on the pid runc has just vouched for; it outlives any reuse of the number.
        with ProcessHandle(int(state.get("pid", 0))) as process:
            await runtime.kill(sandbox_id, "KILL")
            try:
                async with asyncio.timeout(_KILL_WAIT):
                    await exited.wait()
                return
            except TimeoutError:
                pass
            finally:
                self._exited.pop(sandbox_id, None)
            if not await process.wait_gone(0):
                raise Internal(f"the infra container of pod sandbox {sandbox_id} (pid {process.pid}) did not die "
                               "after SIGKILL")
        log.warning("conmon did not report the exit of pod sandbox %s's infra container", sandbox_id)

    async def remove(self, sandbox_id: str, runtime: OciRuntime | None) -> None:
        """Delete the infra container and its files; safe when half made, already gone, or repeated."""
        bundle = self._layout.bundle(sandbox_id)
        if runtime is not None and await asyncio.to_thread(bundle.exists):
            try:
                # Killed by now, unless a create failed half-way or crashed: --force covers those.
                await runtime.delete(sandbox_id, force=True)
            except Internal as exc:
                log.warning("removing the infra container of pod sandbox %s: %s", sandbox_id, exc.message)
        await asyncio.to_thread(self._remove_files, sandbox_id)
        self._exited.pop(sandbox_id, None)

    def _remove_files(self, sandbox_id: str) -> None:
        shutil.rmtree(self._layout.bundle(sandbox_id), ignore_errors=True)
        shutil.rmtree(self._layout.persist(sandbox_id), ignore_errors=True)
        self._layout.exit_file(sandbox_id).unlink(missing_ok=True)

    async def running(self, sandbox: SandboxRecord, runtime: OciRuntime | None) -> bool:
        """Is the pod's infra container still the process that was recorded, and alive?"""
        if runtime is None or not sandbox.infra_pid:
            return False
        state = await runtime.state(sandbox.id)
        if state is None or state.get("status") != "running" or state.get("pid") != sandbox.infra_pid:
            return False
        return Path(f"/proc/{sandbox.infra_pid}").exists()


def missing_infra_rootfs(sandbox_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"pod sandbox {sandbox_id} shares one PID namespace (namespace_options.pid = POD) and needs an infra "
        "container, but start_sandbox carried no pause image rootfs (infra_rootfs) and image (infra_image)")
