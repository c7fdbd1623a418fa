"""Entry point of the gateway process."""

from __future__ import annotations

import asyncio
import sys

from services.gateway.app import serve
from shared.daemon import parse_config, setup_logging
from shared.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(argv, "criplex-gateway")
    except ConfigError as exc:
        print(f"criplex-gateway: configuration error: {exc.message}", file=sys.stderr)
        return 2
    setup_logging("gateway", config.log.level)
    asyncio.run(serve(config, lambda: parse_config(argv, "criplex-gateway")))
    return 0
