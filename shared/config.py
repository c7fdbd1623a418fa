"""The one typed configuration of criplex, shared by every service.

Sources, later ones overriding earlier ones key by key:
built-in defaults, /etc/criplex/criplex.toml, /etc/criplex/criplex.d/*.toml in
lexical order, then a file given with --config. Every file is checked on its own
so an error names the file, the key and what was expected; unknown keys are errors.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toml

from shared.errors import ConfigError
from shared.typed import ShapeError, from_plain, to_plain

DEFAULT_FILE = Path("/etc/criplex/criplex.toml")
DEFAULT_DROPIN_DIR = Path("/etc/criplex/criplex.d")
SERVICES = ("gateway", "imaged", "storaged", "netd", "monitord", "streamd")
# The daemons the gateway calls (and watches the health of). streamd is one, but no
# readiness condition depends on it: without it only Exec/Attach/PortForward fail.
DAEMONS = ("imaged", "storaged", "netd", "monitord", "streamd")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _check(ok: bool, key: str, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{key}: expected {expected}, got {value!r}")


# Daemon cgroups (shared/daemon_cgroups.py). Lifecycle daemons (gateway, netd, monitord) outweigh
# the bulk workers (imaged, storaged) tenfold, so a pull storm cannot starve a pod start.
LIFECYCLE_WEIGHT, BULK_WEIGHT = 1000, 100


def _check_daemon_resources(section: str, cpu_weight: int, memory_max: str) -> None:
    _check(1 <= cpu_weight <= 10000, f"{section}.cpu_weight", "a cgroup v2 weight from 1 to 10000", cpu_weight)
    try:
        ok = memory_max == "" or parse_size(memory_max) >= 16 << 20
    except ValueError:
        ok = False
    _check(ok, f"{section}.memory_max", "\"\" (no limit) or a size of at least 16m like \"512m\"", memory_max)


@dataclass(frozen=True)
class PathsConfig:
    run_dir: str = "/run/criplex"
    state_dir: str = "/var/lib/criplex"
    log_dir: str = "/var/log/criplex"
    # Where each daemon's cgroup goes (<parent>/criplex-<daemon>); "" = leave the daemons where they start.
    daemon_cgroup_parent: str = "/criplex.daemons"

    def __post_init__(self) -> None:
        for key in ("run_dir", "state_dir", "log_dir"):
            value = getattr(self, key)
            _check(value.startswith("/"), f"paths.{key}", "an absolute path", value)
        _check(self.daemon_cgroup_parent == "" or self.daemon_cgroup_parent.startswith("/"),
               "paths.daemon_cgroup_parent", "an absolute cgroup path like \"/criplex.daemons\", or \"\"",
               self.daemon_cgroup_parent)
        # criplex writes these cgroups itself (cgroupfs), and a slice is systemd's, never delegated:
        # ARCHITECTURE.md "Daemon cgroups" says what to point the parent at on a systemd host.
        _check(not self.daemon_cgroup_parent.endswith(".slice"), "paths.daemon_cgroup_parent",
               "a cgroupfs path, not a systemd slice (use a delegated unit's cgroup, see ARCHITECTURE.md)",
               self.daemon_cgroup_parent)
        # AF_UNIX paths are limited to 107 bytes; leave room for "ipc/monitord.events.sock".
        _check(len(self.run_dir) <= 70, "paths.run_dir", "a path of at most 70 bytes", self.run_dir)


@dataclass(frozen=True)
class GatewayConfig:
    socket: str = ""  # empty: <run_dir>/criplex.sock
    socket_mode: str = "0660"
    default_timeout: float = 120.0
    # How often the reconciler looks for leftovers of interrupted creates and removes.
    reconcile_interval: float = 30.0
    # Slow calls the gateway lets through at once (services/gateway/bounds.py); more wait for a slot
    # within their deadline, so a flood of them cannot take every worker of imaged or monitord.
    max_concurrent_pulls: int = 4
    max_concurrent_exec_sync: int = 16
    # The longest a pull's download or unpack step pauses while pod starts are in flight
    # (shared/pod_starts.py); 0: pulls never yield.
    pulls_yield_ms: int = 200
    cpu_weight: int = LIFECYCLE_WEIGHT
    memory_max: str = "512m"

    def __post_init__(self) -> None:
        _check_daemon_resources("gateway", self.cpu_weight, self.memory_max)
        _check(self.max_concurrent_pulls >= 1, "gateway.max_concurrent_pulls", "at least 1",
               self.max_concurrent_pulls)
        _check(self.max_concurrent_exec_sync >= 1, "gateway.max_concurrent_exec_sync", "at least 1",
               self.max_concurrent_exec_sync)
        _check(0 <= self.pulls_yield_ms <= 10_000, "gateway.pulls_yield_ms", "milliseconds from 0 to 10000",
               self.pulls_yield_ms)
        _check(self.socket == "" or self.socket.startswith("/"), "gateway.socket", "an absolute path",
               self.socket)
        _check(len(self.socket_mode) in (3, 4) and all(c in "01234567" for c in self.socket_mode),
               "gateway.socket_mode", "an octal mode string like \"0660\"", self.socket_mode)
        _check(self.default_timeout > 0, "gateway.default_timeout", "seconds > 0", self.default_timeout)
        _check(self.reconcile_interval > 0, "gateway.reconcile_interval", "seconds > 0", self.reconcile_interval)


@dataclass(frozen=True)
class TransportConfig:
    workers: int = 64
    # One ceiling for every nng socket and the gRPC server: manifests and configs fit
    # easily, while a runaway or hostile peer cannot make a receiver allocate without bound.
    max_message_bytes: int = 16 * 1024 * 1024
    reconnect_min_ms: int = 10
    reconnect_max_ms: int = 250

    def __post_init__(self) -> None:
        _check(1 <= self.workers <= 4096, "transport.workers", "an integer from 1 to 4096", self.workers)
        _check(self.max_message_bytes >= 65536, "transport.max_message_bytes", "at least 65536",
               self.max_message_bytes)
        _check(0 < self.reconnect_min_ms <= self.reconnect_max_ms, "transport.reconnect_min_ms",
               "0 < reconnect_min_ms <= reconnect_max_ms", self.reconnect_min_ms)


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str = ""  # OTLP/gRPC collector, e.g. "http://127.0.0.1:4317"; empty = off
    sample_rate: float = 1.0
    # Finished spans each process keeps in memory for `criplex trace`; 0 = none (and, without an
    # endpoint, no spans recorded at all).
    ring_size: int = 2048

    def __post_init__(self) -> None:
        _check(0.0 <= self.sample_rate <= 1.0, "tracing.sample_rate", "a number from 0 to 1",
               self.sample_rate)
        _check(self.endpoint == "" or "://" in self.endpoint, "tracing.endpoint",
               "a URL like http://127.0.0.1:4317", self.endpoint)
        _check(self.ring_size >= 0, "tracing.ring_size", "a number of spans >= 0", self.ring_size)


@dataclass(frozen=True)
class MetricsConfig:
    """The gateway's Prometheus endpoint (CRI-O's `[crio.metrics]`)."""

    enable: bool = False
    address: str = "127.0.0.1"
    port: int = 9090

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "metrics.port", "a port from 0 to 65535", self.port)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"

    def __post_init__(self) -> None:
        _check(self.level in LOG_LEVELS, "log.level", f"one of {', '.join(LOG_LEVELS)}", self.level)


@dataclass(frozen=True)
class ImagedConfig:
    registries_conf: str = "/etc/containers/registries.conf"
    registries_conf_d: str = "/etc/containers/registries.conf.d"
    policy: str = "/etc/containers/policy.json"
    auth_file: str = "/etc/criplex/auth.json"
    certs_dir: str = "/etc/containers/certs.d"
    platform: str = "linux/amd64"
    max_concurrent_downloads: int = 3
    pull_timeout: float = 600.0
    retries: int = 3
    pause_image: str = "registry.k8s.io/pause:3.9"
    cpu_weight: int = BULK_WEIGHT
    memory_max: str = "1g"
    # Where docker-credential-<name> helpers (auth_file's credHelpers/credsStore) are looked up;
    # empty: imaged's PATH.
    credential_helper_dirs: tuple[str, ...] = ()
    credential_helper_timeout: float = 30.0

    def __post_init__(self) -> None:
        _check_daemon_resources("imaged", self.cpu_weight, self.memory_max)
        _check(1 <= self.max_concurrent_downloads <= 64, "imaged.max_concurrent_downloads",
               "an integer from 1 to 64", self.max_concurrent_downloads)
        _check(self.platform.count("/") in (1, 2), "imaged.platform", "os/arch[/variant]", self.platform)
        _check(self.pull_timeout > 0, "imaged.pull_timeout", "seconds > 0", self.pull_timeout)
        _check(0 <= self.retries <= 10, "imaged.retries", "an integer from 0 to 10", self.retries)
        _check(self.credential_helper_timeout > 0, "imaged.credential_helper_timeout", "seconds > 0",
               self.credential_helper_timeout)


@dataclass(frozen=True)
class StoragedConfig:
    root: str = ""  # empty: <state_dir>/storaged
    cpu_weight: int = BULK_WEIGHT
    memory_max: str = "1g"

    def __post_init__(self) -> None:
        _check_daemon_resources("storaged", self.cpu_weight, self.memory_max)


@dataclass(frozen=True)
class NetdConfig:
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")
    cni_network: str = ""  # the network (by its name) pods get; empty: the first config file in lexical order
    plugin_timeout: float = 30.0  # seconds for one CNI plugin call
    default_subnet: str = "10.85.0.0/16"  # the subnet of the conflist `criplex up` installs when there is none
    cpu_weight: int = LIFECYCLE_WEIGHT
    memory_max: str = "512m"

    def __post_init__(self) -> None:
        _check_daemon_resources("netd", self.cpu_weight, self.memory_max)
        _check(self.plugin_timeout > 0, "netd.plugin_timeout", "seconds > 0", self.plugin_timeout)
        try:
            ipaddress.ip_network(self.default_subnet)
        except ValueError:
            _check(False, "netd.default_subnet", "a CIDR such as 10.85.0.0/16", self.default_subnet)


@dataclass(frozen=True)
class RuntimeHandler:
    path: str = "/usr/sbin/runc"
    root: str = ""  # empty: <run_dir>/runtimes/<handler>


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes from "67108864", "64m", "64Mi" or "1g" (binary units); ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgKMG]?)(?:i?[bB]?)\s*", text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class MonitordConfig:
    conmon: str = "/usr/bin/conmon"
    default_runtime: str = "runc"
    runtimes: dict[str, RuntimeHandler] = field(default_factory=lambda: {"runc": RuntimeHandler()})
    cgroup_manager: str = "cgroupfs"  # or "systemd"
    default_cgroup_parent: str = "/criplex"  # for pods whose config names no cgroup_parent
    shm_size: str = "64m"  # a pod's /dev/shm tmpfs: bytes, or with a k/m/g suffix
    hooks_dirs: tuple[str, ...] = ("/usr/share/containers/oci/hooks.d", "/etc/containers/oci/hooks.d")
    log_size_max: int = -1  # bytes after which conmon truncates a container log; -1 = unlimited
    create_timeout: float = 60.0  # seconds conmon may take to report a created container
    cpu_weight: int = LIFECYCLE_WEIGHT
    memory_max: str = "512m"  # monitord alone: conmon is moved out into <daemon_cgroup_parent>/criplex-conmon

    def __post_init__(self) -> None:
        _check_daemon_resources("monitord", self.cpu_weight, self.memory_max)
        _check(self.default_runtime in self.runtimes, "monitord.default_runtime",
               f"a handler of monitord.runtimes ({', '.join(self.runtimes)})", self.default_runtime)
        _check(self.cgroup_manager in ("cgroupfs", "systemd"), "monitord.cgroup_manager",
               "\"cgroupfs\" or \"systemd\"", self.cgroup_manager)
        if self.cgroup_manager == "cgroupfs":
            _check(self.default_cgroup_parent.startswith("/"), "monitord.default_cgroup_parent",
                   "an absolute cgroup path like \"/criplex\"", self.default_cgroup_parent)
        else:
            _check(self.default_cgroup_parent.endswith(".slice"), "monitord.default_cgroup_parent",
                   "a systemd slice like \"criplex.slice\"", self.default_cgroup_parent)
        try:
            shm = parse_size(self.shm_size)
        except ValueError:
            shm = 0
        _check(shm > 0, "monitord.shm_size", "a size like \"64m\" or a byte count", self.shm_size)
        _check(all(d.startswith("/") for d in self.hooks_dirs), "monitord.hooks_dirs", "absolute paths",
               self.hooks_dirs)
        _check(self.log_size_max == -1 or self.log_size_max >= 8192, "monitord.log_size_max",
               "-1 (unlimited) or at least 8192 bytes", self.log_size_max)
        _check(self.create_timeout > 0, "monitord.create_timeout", "seconds > 0", self.create_timeout)
        for name, handler in self.runtimes.items():
            _check(handler.path.startswith("/"), f"monitord.runtimes.{name}.path", "an absolute path",
                   handler.path)
            _check(handler.root == "" or handler.root.startswith("/"), f"monitord.runtimes.{name}.root",
                   "an absolute path", handler.root)

    def runtime_root(self, handler: str, run_dir: str) -> str:
        """The runtime's --root for `handler`: its configured root, else <run_dir>/runtimes/<handler>."""
        return self.runtimes[handler].root or os.path.join(run_dir, "runtimes", handler)


@dataclass(frozen=True)
class StreamdConfig:
    """The streaming server (Exec/Attach/PortForward URLs), with CRI-O's defaults."""

    address: str = "127.0.0.1"
    port: int = 0  # 0: a random port, chosen once per streamd start
    tls_cert: str = ""  # both set: https; both empty: http
    tls_key: str = ""
    idle_timeout: float = 900.0  # seconds without traffic (PINGs aside) after which a session ends
    token_ttl: float = 60.0  # seconds a returned URL stays usable
    max_tokens: int = 1000  # URLs handed out and not used yet; past it: RESOURCE_EXHAUSTED
    cpu_weight: int = LIFECYCLE_WEIGHT
    memory_max: str = "512m"

    def __post_init__(self) -> None:
        _check_daemon_resources("streamd", self.cpu_weight, self.memory_max)
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            _check(False, "streamd.address", "an IP address such as 127.0.0.1", self.address)
        _check(0 <= self.port <= 65535, "streamd.port", "a port from 0 (random) to 65535", self.port)
        _check(bool(self.tls_cert) == bool(self.tls_key), "streamd.tls_cert", "set together with tls_key",
               self.tls_cert)
        _check(self.idle_timeout > 0, "streamd.idle_timeout", "seconds > 0", self.idle_timeout)
        _check(self.token_ttl > 0, "streamd.token_ttl", "seconds > 0", self.token_ttl)
        _check(self.max_tokens >= 1, "streamd.max_tokens", "at least 1", self.max_tokens)


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    imaged: ImagedConfig = field(default_factory=ImagedConfig)
    storaged: StoragedConfig = field(default_factory=StoragedConfig)
    netd: NetdConfig = field(default_factory=NetdConfig)
    monitord: MonitordConfig = field(default_factory=MonitordConfig)
    streamd: StreamdConfig = field(default_factory=StreamdConfig)

    @property
    def ipc_dir(self) -> Path:
        return Path(self.paths.run_dir) / "ipc"

    def ipc_address(self, service: str) -> str:
        return f"ipc://{self.ipc_dir / service}.sock"

    def events_address(self, service: str) -> str:
        return f"ipc://{self.ipc_dir / service}.events.sock"

    @property
    def cri_socket(self) -> Path:
        return Path(self.gateway.socket or os.path.join(self.paths.run_dir, "criplex.sock"))

    def state_dir(self, service: str) -> Path:
        if service == "storaged" and self.storaged.root:
            return Path(self.storaged.root)
        return Path(self.paths.state_dir) / service

    def to_toml(self) -> str:
        return toml.dumps(to_plain(self))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "runtimes":
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, dict) and key == "runtimes" and isinstance(out.get(key), dict):
            # Handlers merge by name, each handler replaced whole.
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _read_layer(path: Path) -> dict[str, Any]:
    try:
        data = toml.loads(path.read_text())
    except toml.TomlDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return data


def _validate(data: dict[str, Any], source: str) -> Config:
    try:
        return from_plain(Config, data)
    except ShapeError as exc:
        raise ConfigError(f"{source}: {exc.path}: {exc.problem}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_sources(extra: str | None = None, etc_file: Path = DEFAULT_FILE,
                   dropin_dir: Path = DEFAULT_DROPIN_DIR) -> list[Path]:
    sources = [etc_file] if etc_file.is_file() else []
    if dropin_dir.is_dir():
        sources += sorted(p for p in dropin_dir.iterdir() if p.suffix == ".toml" and p.is_file())
    if extra:
        path = Path(extra)
        if not path.is_file():
            raise ConfigError(f"{path}: --config file does not exist")
        sources.append(path)
    return sources


def load_config(extra: str | None = None, etc_file: Path = DEFAULT_FILE,
                dropin_dir: Path = DEFAULT_DROPIN_DIR) -> Config:
    # Each file is checked on top of what came before it, so an error names that file
    # while checks that span keys (like default_runtime) still see the defaults.
    merged: dict[str, Any] = to_plain(Config())
    config = Config()
    for path in config_sources(extra, etc_file, dropin_dir):
        merged = _deep_merge(merged, _read_layer(path))
        config = _validate(merged, str(path))
    return config
