"""Putting a container's OCI runtime spec together from its concerns.

Each concern is a pure function in its own module; this one only decides the order and
where each answer goes in config.json. The only side effects: reading the container's
/etc/passwd and /etc/group, the hooks and CDI directories, device nodes, and creating a
missing bind-mount source directory (as CRI-O and Docker do for hostPath volumes).
"""

from __future__ import annotations

import os
from typing import Any

from services.monitord.spec import cdi, hooks
from services.monitord.spec.capabilities import container_capabilities
from services.monitord.spec.devices import cri_devices, default_device_rules, host_devices
from services.monitord.spec.inputs import GeneratedSpec, SpecInputs
from services.monitord.spec.mounts import cri_mounts, default_mounts, has_bind_mounts, pod_file_mounts
from services.monitord.spec.namespaces import container_namespaces, pod_hostname
from services.monitord.spec.process import process_args, process_env, stop_signal, working_dir
from services.monitord.spec.resources import cgroups_path, linux_resources, oom_score_adj
from services.monitord.spec.seccomp import seccomp_choice, seccomp_profile
from services.monitord.spec.sysctls import container_sysctls
from services.monitord.spec.user import resolve_user_in_rootfs, user_request

OCI_VERSION = "1.0.2"

DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = (
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


def generate(inputs: SpecInputs) -> GeneratedSpec:
    config, sandbox, host, image = inputs.config, inputs.sandbox, inputs.host, inputs.image
    sc = config.linux.security_context
    privileged = sc.privileged
    hostname = pod_hostname(inputs.sandbox_config)

    argv = process_args(tuple(config.command), tuple(config.args), image.entrypoint, image.cmd)
    cdi_edits = cdi.resolve_devices([d.name for d in config.CDI_devices], host.cdi_dirs)
    env = process_env(image.env, tuple((kv.key, kv.value) for kv in config.envs), hostname)
    env = _override_env(env, cdi_edits.env)
    user = resolve_user_in_rootfs(inputs.rootfs, user_request(sc, image.user))
    if cdi_edits.additional_gids:
        groups = tuple(dict.fromkeys([*user.supplemental_groups, *cdi_edits.additional_gids]))
        user = type(user)(uid=user.uid, gid=user.gid, supplemental_groups=groups)
    capabilities = container_capabilities(sc.capabilities, privileged, host.bounding_capabilities)

    volumes = cri_mounts(list(config.mounts), _supports(host.runtime_mount_options, "rro"))
    _create_missing_sources(volumes.mounts)
    taken = {m["destination"] for m in volumes.mounts} | {m["destination"] for m in cdi_edits.mounts}
    mounts = [m for m in default_mounts(sandbox, privileged) if m["destination"] not in taken]
    mounts += pod_file_mounts(sandbox, taken, sc.readonly_rootfs)
    mounts += volumes.mounts
    mounts += cdi_edits.mounts

    devices, device_rules = cri_devices(list(config.devices))
    devices += cdi_edits.device_nodes
    device_rules += cdi_edits.device_rules
    if privileged:
        devices = host_devices()
        device_rules = [{"allow": True, "access": "rwm"}]
    else:
        device_rules = default_device_rules() + device_rules

    resources = linux_resources(
        config.linux.resources, cgroup_v2=host.cgroup_v2, swap_accounting=host.swap_accounting
    )
    resources["devices"] = device_rules

    annotations = _annotations(inputs)
    hook_files = hooks.load_hook_files(host.hooks_dirs)
    spec_hooks = hooks.spec_hooks(hook_files, annotations, argv[0], has_bind_mounts(volumes.mounts))
    for stage, entries in cdi_edits.hooks.items():
        spec_hooks.setdefault(stage, []).extend(entries)

    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.supplemental_groups)},
        "args": argv,
        "env": env,
        "cwd": working_dir(config.working_dir, image.working_dir),
        "capabilities": capabilities,
        "noNewPrivileges": sc.no_new_privs,
        "oomScoreAdj": oom_score_adj(config.linux.resources, host.oom_score_adj_min),
    }
    linux: dict[str, Any] = {
        "namespaces": container_namespaces(sc.namespace_options.pid, sandbox, inputs.target_pid),
        "cgroupsPath": cgroups_path(host.cgroup_driver, sandbox.cgroup_parent, host.default_cgroup_parent,
                                    inputs.container_id),
        "resources": resources,
        "devices": devices,
        "maskedPaths": [] if privileged else list(sc.masked_paths or DEFAULT_MASKED_PATHS),
        "readonlyPaths": [] if privileged else list(sc.readonly_paths or DEFAULT_READONLY_PATHS),
    }
    sysctls = container_sysctls(inputs.sandbox_config.linux.sysctls, sandbox)
    if sysctls:
        linux["sysctl"] = sysctls
    profile = seccomp_profile(
        seccomp_choice(sc, host.seccomp_localhost_root), frozenset(capabilities["bounding"]), host.seccomp_profile
    )
    if profile is not None:
        linux["seccomp"] = profile
    if volumes.rootfs_propagation:
        linux["rootfsPropagation"] = volumes.rootfs_propagation

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": inputs.rootfs, "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    }
    if sandbox.uts_path:  # runc refuses a hostname without a UTS namespace of the container's own
        spec["hostname"] = hostname
    if spec_hooks:
        spec["hooks"] = spec_hooks
    return GeneratedSpec(spec=spec, user=user, stop_signal=stop_signal(config.stop_signal, image.stop_signal))


def _supports(options: frozenset[str] | None, option: str) -> bool:
    return options is None or option in options


def _override_env(env: list[str], overrides: list[str]) -> list[str]:
    if not overrides:
        return env
    merged = dict(item.partition("=")[::2] for item in env)
    for item in overrides:
        key, _, value = item.partition("=")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def _annotations(inputs: SpecInputs) -> dict[str, str]:
    config, sandbox_config = inputs.config, inputs.sandbox_config
    annotations = dict(config.annotations)
    annotations.update(
        {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": config.metadata.name,
            "io.kubernetes.cri.sandbox-id": inputs.sandbox.id,
            "io.kubernetes.cri.sandbox-name": sandbox_config.metadata.name,
            "io.kubernetes.cri.sandbox-namespace": sandbox_config.metadata.namespace,
            "io.kubernetes.cri.sandbox-uid": sandbox_config.metadata.uid,
            "io.kubernetes.cri.image-name": config.image.image or inputs.image.id,
        }
    )
    annotations.update(inputs.extra_annotations)
    return annotations


def _create_missing_sources(mounts: list[dict[str, Any]]) -> None:
    for m in mounts:
        if not os.path.lexists(m["source"]):
            os.makedirs(m["source"], mode=0o755, exist_ok=True)
