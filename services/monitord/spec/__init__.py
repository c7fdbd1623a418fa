"""The OCI runtime spec (config.json) of a container, generated from its CRI configs.

`generate` builds the whole spec; `linux_resources` is the CRI -> OCI resources conversion
on its own, which monitord also feeds to `runc update`; `probe_host_facts` reads the
host's side of `HostFacts` once at monitord's start.
"""

from services.monitord.spec.assemble import generate
from services.monitord.spec.host import probe_host_facts
from services.monitord.spec.inputs import GeneratedSpec, HostFacts, SpecInputs
from services.monitord.spec.resources import linux_resources

__all__ = ["GeneratedSpec", "HostFacts", "SpecInputs", "generate", "linux_resources", "probe_host_facts"]
