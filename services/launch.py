"""`python -m services.launch SERVICE`: put this process in SERVICE's cgroup, then become the daemon.

supervisord runs this as each program's command. It execs, so the daemon keeps the PID
supervisord started and supervisord's signals reach the daemon itself; the cgroup is
entered before the exec, so the daemon and everything it starts begin life inside it,
and every restart lands there again.
"""

from __future__ import annotations

import os
import sys

from shared import daemon_cgroups
from shared.cgroup_hierarchy import Hierarchy
from shared.config import SERVICES, load_config
from shared.errors import ConfigError

MODULES = {service: f"services.{service}" for service in SERVICES} | {"streamd": "services.gateway.streaming"}


def enter_cgroup(service: str, hierarchy: Hierarchy) -> None:
    """Best effort: a host without writable cgroups still runs criplex, and says so in the daemon's log.

    At most one line: either the daemon stays where it is, or it is placed without the
    settings the host cannot apply (e.g. cpu/memory bound to cgroup v1 on a hybrid host).
    """
    try:
        config = load_config(os.environ.get("CRIPLEX_CONFIG") or None)
    except ConfigError:
        return  # the daemon itself reports the configuration error, in its own words
    try:
        placement = daemon_cgroups.enter(hierarchy, config, service, os.getpid())
    except OSError as exc:
        _say(f"{service} stays in its current cgroup: {exc}")
        return
    if placement.missing and not placement.path:
        _say(f"{service} stays in its current cgroup: {placement.why}")
    elif placement.missing:
        _say(f"{service} runs in {placement.path} without its {placement.unapplied()}: {placement.why}")


def _say(line: str) -> None:
    print(f"criplex launch: {line}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    if len(argv) < 1 or argv[0] not in MODULES:
        sys.exit(f"usage: python -m services.launch {{{','.join(SERVICES)}}} [daemon args...]")
    service = argv[0]
    enter_cgroup(service, Hierarchy.detect())
    os.execv(sys.executable, [sys.executable, "-m", MODULES[service], *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
