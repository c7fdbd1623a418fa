"""What monitord tells /metrics: OOM kills (CRI-O's containers_oom_*) and defunct processes."""

from __future__ import annotations

import os

from shared.schema.common import LabeledValue, MetricsReport


def defunct_processes(proc: str = "/proc") -> int:
    """Zombies on the node, as CRI-O's processes_defunct counts them (state Z in /proc/<pid>/stat)."""
    count = 0
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # The state follows the command name, which is in parentheses and may hold any byte.
        if stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3] == b"Z":
            count += 1
    return count


def report(oom_kills: dict[str, int]) -> MetricsReport:
    return MetricsReport(
        values={"containers_oom_total": float(sum(oom_kills.values())),
                "processes_defunct": float(defunct_processes())},
        series=tuple(LabeledValue("containers_oom_count_total", {"name": name}, float(count))
                     for name, count in sorted(oom_kills.items())),
    )
