"""`criplex trace pod POD_ID [--svg FILE]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from services.podtrace.gather import gather_pod
from services.podtrace.waterfall import render_svg, render_text, rows
from shared.config import Config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = sub.add_parser("trace", help="where a pod's start spent its time: a waterfall of its spans")
    trace.add_argument("kind", choices=("pod",))
    trace.add_argument("pod_id", help="the pod sandbox ID (a prefix is not enough)")
    trace.add_argument("--svg", metavar="FILE", help="also write the waterfall as an SVG picture")


def cmd_trace(config: Config, args: argparse.Namespace) -> int:
    found = asyncio.run(gather_pod(config, args.pod_id))
    if not found.spans:
        print(f"no spans of pod {args.pod_id} (the gateway's ring keeps the last tracing.ring_size spans; "
              "is tracing.ring_size 0, or criplex restarted since?)", file=sys.stderr)
        return 1
    table = rows(found.spans)
    title = f"pod {args.pod_id[:13]}"
    sys.stdout.write(render_text(title, table))
    if found.unreachable:
        print(f"missing the spans of: {', '.join(found.unreachable)} (not answering)", file=sys.stderr)
    if args.svg:
        Path(args.svg).write_text(render_svg(title, table))
    return 0
