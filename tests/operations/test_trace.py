"""`criplex trace pod`: one pod's start, from the gateway and every daemon, as a waterfall."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from services.podtrace.gather import gather_pod
from services.podtrace.waterfall import rows
from shared.config import load_config
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.runtime import REPO


def start_pod(pods: Pods) -> str:
    sandbox = sandbox_config()
    sid = pods.run_pod(sandbox)
    pods.start(pods.create(sid, container_config(pods.image, ["sleep", "3600"]), sandbox))
    return sid


def criplex(pods: Pods, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", "--config", str(pods.run.config_file), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_trace_pod_shows_spans_of_every_daemon_that_fit_in_the_pods_start(observed: Pods) -> None:
    sid = start_pod(observed)
    found = asyncio.run(gather_pod(load_config(str(observed.run.config_file)), sid))

    assert not found.unreachable
    services = {span.service for span in found.spans}
    assert {"gateway", "netd", "storaged", "monitord"} <= services
    names = {span.name for span in found.spans}
    assert {"runtime.v1/RunPodSandbox", "runtime.v1/CreateContainer", "runtime.v1/StartContainer"} <= names
    assert any(name.startswith("cni loopback ADD") for name in names)
    assert "overlay mount" in names
    assert any(name.startswith("conmon start") for name in names)
    assert any(name.endswith(" start") and name.startswith("runc") for name in names)
    assert len({span.trace_id for span in found.spans}) == 3

    by_id = {span.span_id: span for span in found.spans}
    total = max(s.end_ns for s in found.spans) - min(s.start_ns for s in found.spans)
    roots = [s for s in found.spans if s.parent_id not in by_id]
    assert sum(s.end_ns - s.start_ns for s in roots) <= total
    for span in found.spans:
        parent = by_id.get(span.parent_id)
        if parent is not None:  # a child lies within its parent, whichever process recorded it
            assert parent.start_ns <= span.start_ns and span.end_ns <= parent.end_ns, (span.name, parent.name)
        children = [c for c in found.spans if c.parent_id == span.span_id and c.service == span.service]
        # Sequential children of one process fit in their parent's time.
        if children and all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(children)):
            assert sum(c.end_ns - c.start_ns for c in children) <= span.end_ns - span.start_ns

    table = rows(found.spans)
    assert [r.span.name for r in table if r.depth == 0] == [
        "runtime.v1/RunPodSandbox", "runtime.v1/CreateContainer", "runtime.v1/StartContainer"]


def test_criplex_trace_pod_prints_a_waterfall_and_writes_an_svg(observed: Pods, tmp_path: Path) -> None:
    sid = start_pod(observed)
    svg = tmp_path / "pod.svg"
    done = criplex(observed, "trace", "pod", sid, "--svg", str(svg))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"pod {sid[:13]}")
    rows_ = lines[1:]
    assert rows_[0].startswith("runtime.v1/RunPodSandbox")
    assert any(line.startswith("  ") and "netd" in line for line in rows_)  # indented under its parent
    for daemon in ("gateway", "netd", "storaged", "monitord"):
        assert any(f" {daemon} " in line for line in rows_), daemon
    assert all("|" in line and line.rstrip().endswith("ms") for line in rows_)

    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    rects = root.findall("{http://www.w3.org/2000/svg}rect")
    assert len(rects) == len(rows_)


def test_trace_of_an_unknown_pod_says_so(observed: Pods) -> None:
    done = criplex(observed, "trace", "pod", "f" * 64)
    assert done.returncode == 1
    assert "no spans" in done.stderr
