"""The host's container configuration files, re-read when they change.

registries.conf (+ drop-ins), policy.json and the auth file are shared with
other tools and edited by administrators while criplex runs; like CRI-O after
a reload, a pull uses their current content. Each is re-parsed only when a
file's (name, mtime, size) changes, so an unchanged host costs a few stat calls.

An invalid file fails the pulls that need it with FailedPrecondition naming the
file, and never the daemon: other images keep working once it is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from services.imaged import auth, policy
from services.imaged.registries_conf import RegistriesConf, parse_registries_conf
from shared.config import ImagedConfig
from shared.errors import ConfigError, FailedPrecondition

log = logging.getLogger(__name__)

T = TypeVar("T")
Signature = tuple[tuple[str, int, int], ...]
_DEFAULT_POLICY = ImagedConfig().policy


def _signature(paths: list[Path]) -> Signature:
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((str(path), -1, -1))
    return tuple(out)


class _Cached(Generic[T]):
    def __init__(self, files: Callable[[], list[Path]], load: Callable[[list[Path]], T]) -> None:
        self._files = files
        self._load = load
        self._signature: Signature | None = None
        self._value: T | None = None
        self._error: FailedPrecondition | None = None

    def get(self) -> T:
        paths = self._files()
        signature = _signature(paths)
        if signature != self._signature:
            self._signature = signature
            try:
                self._value, self._error = self._load(paths), None
            except (ConfigError, OSError) as exc:
                message = exc.message if isinstance(exc, ConfigError) else f"{exc.filename}: {exc.strerror}"
                log.error("host configuration: %s", message)
                self._value, self._error = None, FailedPrecondition(f"host configuration: {message}")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class HostConfig:
    def __init__(self, config: ImagedConfig) -> None:
        self.reload(config)

    def reload(self, config: ImagedConfig) -> None:
        """Take (possibly new) file locations and drop every cached parse: the next use re-reads."""
        self._config = config
        self._registries: _Cached[RegistriesConf] = _Cached(self._registries_files, self._load_registries)
        self._policy: _Cached[policy.Policy] = _Cached(lambda: [Path(config.policy)], self._load_policy)
        self._auths: _Cached[auth.AuthFile] = _Cached(lambda: [Path(config.auth_file)], self._load_auths)

    def registries(self) -> RegistriesConf:
        return self._registries.get()

    def policy(self) -> policy.Policy:
        return self._policy.get()

    def auths(self) -> auth.AuthFile:
        return self._auths.get()

    def _registries_files(self) -> list[Path]:
        dropin_dir = Path(self._config.registries_conf_d)
        try:
            dropins = sorted(p for p in dropin_dir.iterdir() if p.suffix == ".conf" and p.is_file())
        except OSError:
            dropins = []
        return [Path(self._config.registries_conf), *dropins]

    @staticmethod
    def _load_registries(paths: list[Path]) -> RegistriesConf:
        # A missing registries.conf is an empty one, as for containers/image.
        conf = RegistriesConf()
        for path in paths:
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            conf = conf.merged_with(parse_registries_conf(text, str(path)))
        return conf

    def _load_policy(self, paths: list[Path]) -> policy.Policy:
        path = paths[0]
        try:
            text = path.read_text()
        except FileNotFoundError:
            if str(path) != _DEFAULT_POLICY:
                raise ConfigError(f"{path}: the configured imaged.policy file does not exist") from None
            # No policy.json on the host at all (no containers-common): accept, like containerd,
            # which has no policy; an administrator who writes one gets it enforced.
            log.warning("%s does not exist: every image is accepted (insecureAcceptAnything)", path)
            return policy.ACCEPT_ANYTHING
        return policy.parse_policy(text, str(path))

    @staticmethod
    def _load_auths(paths: list[Path]) -> auth.AuthFile:
        try:
            text = paths[0].read_text()
        except FileNotFoundError:
            return auth.AuthFile()
        return auth.parse_auth_config(text, str(paths[0]))
