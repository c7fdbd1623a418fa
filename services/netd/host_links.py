"""Host interfaces that lead into a pod's network namespace, found and removed through netlink.

After a DEL that had no cached result (netd died between ADD and writing it), the
chain's DEL was run without prevResult; this makes sure no host end of a veth into
the pod's namespace survives it. The query runs from the host's namespace only: the
pod's namespace is named by an fd on its pin (RTM_GETNSID), and a link leads into it
when its IFLA_LINK_NETNSID is that id. pyroute2's NetNS / netns helpers are never used:
they fork, and nng is not fork-safe.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pyroute2 import AsyncIPRoute

log = logging.getLogger(__name__)


async def remove_links_into(netns: Path) -> list[str]:
    """Delete every host link whose peer is in `netns`; the names removed."""
    removed: list[str] = []
    async with AsyncIPRoute() as ipr:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            answer = await ipr.get_netnsid(fd=fd)
        finally:
            os.close(fd)
        nsid = (answer or {}).get("nsid")
        if nsid is None or nsid < 0:
            return removed  # the host holds no id for it: no link of the host leads there
        leading = [link async for link in await ipr.link("dump") if link.get_attr("IFLA_LINK_NETNSID") == nsid]
        for link in leading:
            name = link.get_attr("IFLA_IFNAME")
            log.warning("removing %s, left on the host by a DEL into %s", name, netns)
            await ipr.link("del", index=link["index"])
            removed.append(name)
    return removed
