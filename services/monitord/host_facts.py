"""The HostFacts monitord generates specs with: probed once at start, plus the configuration."""

from __future__ import annotations

import dataclasses

from services.monitord import spec
from services.monitord.spec.inputs import HostFacts
from shared.config import MonitordConfig


def read_host_facts(config: MonitordConfig) -> HostFacts:
    """Blocking (it runs `runc features`): call it from a worker thread."""
    facts = spec.probe_host_facts(
        config.runtimes[config.default_runtime].path,
        cgroup_driver=config.cgroup_manager,
        default_cgroup_parent=config.default_cgroup_parent,
        hooks_dirs=config.hooks_dirs,
    )
    # Our own oom_score_adj is the floor only without CAP_SYS_RESOURCE (which lowering it needs).
    if "CAP_SYS_RESOURCE" in facts.bounding_capabilities:
        facts = dataclasses.replace(facts, oom_score_adj_min=-1000)
    return facts
