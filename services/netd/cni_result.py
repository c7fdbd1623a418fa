"""What CNI plugins print: results and errors (CNI spec, "Result types" and "Error"), read without I/O.

Results of every version are read here, so that the rest of netd sees one shape:

- 1.0.0: `ips: [{address: "10.1.0.5/24", gateway, interface: <index into interfaces>}]`;
- 0.3.x / 0.4.0: the same plus `version: "4" | "6"` on each IP;
- 0.1.0 / 0.2.0: `ip4: {ip: "10.1.0.5/24", gateway}` and `ip6: {...}`, with no interfaces.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PluginError:
    code: int
    msg: str
    details: str

    def __str__(self) -> str:
        text = self.msg or "failed without a message"
        if self.details:
            text += f" ({self.details})"
        return f"{text} [CNI error code {self.code}]" if self.code else text


def pod_ips(result: dict[str, Any], ifname: str) -> tuple[str, ...]:
    """The pod's addresses in a result: IPv4 first then IPv6, without prefix lengths.

    An address bound to a listed interface counts only when that interface is the pod's
    `ifname` inside the sandbox (a chain that also sets up `lo` reports 127.0.0.1 on it);
    an address bound to no interface counts, as CRI-O and containerd count it."""
    interfaces = result.get("interfaces") or []
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for entry in _ip_entries(result):
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            interface = interfaces[index] or {}
            if interface.get("name") != ifname or not interface.get("sandbox"):
                continue
        address = entry.get("address") or entry.get("ip")
        if not isinstance(address, str):
            continue
        try:
            ip = ipaddress.ip_interface(address).ip
        except ValueError:
            continue
        if ip not in found:
            found.append(ip)
    found.sort(key=lambda ip: ip.version)  # stable: keeps the plugin's order within a family
    return tuple(str(ip) for ip in found)


def _ip_entries(result: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [e for e in result.get("ips") or [] if isinstance(e, dict)]
    for legacy in ("ip4", "ip6"):  # 0.1.0 / 0.2.0
        if isinstance(result.get(legacy), dict):
            entries.append(result[legacy])
    return entries


def parse_output(stdout: bytes) -> dict[str, Any] | None:
    """A plugin's stdout as a JSON object; None when empty (DEL and CHECK print nothing)."""
    if not stdout.strip():
        return None
    try:
        doc = json.loads(stdout)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def plugin_error(stdout: bytes, stderr: bytes, returncode: int) -> PluginError:
    """The error a failing plugin reported: its JSON error on stdout, else what it wrote to stderr."""
    doc = parse_output(stdout)
    if doc is not None and ("msg" in doc or "code" in doc):
        code = doc.get("code")
        return PluginError(code if isinstance(code, int) else 0, str(doc.get("msg") or ""),
                           str(doc.get("details") or ""))
    text = (stderr or stdout).decode(errors="replace").strip()
    return PluginError(0, text[-500:] or f"exited with status {returncode}", "")
