"""Version skew: a daemon on newer code keeps working with older peers, in both directions.

Messages from a peer are read leniently: unknown fields are ignored (logged once), missing
fields take their defaults, and only a missing required field is an error. The configuration
stays strict: an unknown key there is a typo.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from shared.config import load_config
from shared.errors import ConfigError, InvalidArgument
from shared.events import EventPublisher, EventSubscriber
from shared.tracing import Tracing
from shared.transport import DaemonServer
from shared.typed import ShapeError, from_plain
from shared.wire import Method, parse
from tests.foundation.echo import client_of, serving, until


@dataclass(frozen=True)
class GreetRequestV1:
    name: str


@dataclass(frozen=True)
class GreetResponseV1:
    text: str


@dataclass(frozen=True)
class GreetRequestV2:
    name: str
    shout: bool = False  # added in v2


@dataclass(frozen=True)
class GreetResponseV2:
    text: str
    language: str = "en"  # added in v2


@dataclass(frozen=True)
class GreetResponseV3:
    text: str
    length: int  # added in v3 without a default: a v1 daemon cannot satisfy it


@dataclass(frozen=True)
class NoticeV1:
    text: str


@dataclass(frozen=True)
class NoticeV2:
    text: str
    colour: str = ""


@dataclass(frozen=True)
class Plain:
    name: str
    count: int = 0


GREET_V1 = Method("greet", GreetRequestV1, GreetResponseV1)
GREET_V2 = Method("greet", GreetRequestV2, GreetResponseV2)
GREET_V3 = Method("greet", GreetRequestV1, GreetResponseV3)


def v1_daemon(config) -> DaemonServer:
    server = DaemonServer("echo", config, Tracing("echo", config.tracing))

    async def greet(req: GreetRequestV1) -> GreetResponseV1:
        return GreetResponseV1(f"hello {req.name}")

    server.register(GREET_V1, greet)
    return server


def v2_daemon(config, seen: list[GreetRequestV2]) -> DaemonServer:
    server = DaemonServer("echo", config, Tracing("echo", config.tracing))

    async def greet(req: GreetRequestV2) -> GreetResponseV2:
        seen.append(req)
        text = f"hello {req.name}"
        return GreetResponseV2(text.upper() if req.shout else text, "fr")

    server.register(GREET_V2, greet)
    return server


def _ignored_lines(caplog, field: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"ignoring field {field!r}" in r.getMessage()]


def test_newer_client_and_older_daemon_understand_each_other(config, caplog):
    async def main():
        async with serving(v1_daemon(config)), client_of(config) as client:
            for _ in range(3):
                answer = await client.call(GREET_V2, GreetRequestV2("ada", shout=True))
                # The v1 daemon ignored `shout`; its answer lacks `language`, which takes its default.
                assert answer == GreetResponseV2("hello ada", "en")
            with pytest.raises(InvalidArgument, match=r"greet: length: missing"):
                await client.call(GREET_V3, GreetRequestV1("ada"))

    with caplog.at_level(logging.WARNING, logger="shared.typed"):
        asyncio.run(main())
    assert len(_ignored_lines(caplog, "shout")) == 1, "an unknown field is logged once per process"


def test_older_client_and_newer_daemon_understand_each_other(config, caplog):
    async def main():
        seen: list[GreetRequestV2] = []
        async with serving(v2_daemon(config, seen)), client_of(config) as client:
            for _ in range(3):
                answer = await client.call(GREET_V1, GreetRequestV1("ada"))
                # The v1 client ignored `language`; the v2 daemon gave `shout` its default.
                assert answer == GreetResponseV1("hello ada")
            assert seen[-1] == GreetRequestV2("ada", shout=False)

    with caplog.at_level(logging.WARNING, logger="shared.typed"):
        asyncio.run(main())
    assert len(_ignored_lines(caplog, "language")) == 1


def test_event_from_a_newer_publisher_parses_with_the_older_schema(config):
    async def main():
        publisher = EventPublisher("echo", config)
        sub = EventSubscriber("echo", config)
        reasons: list[str] = []
        sub.on_resync(reasons.append)
        try:
            await until(lambda: "connected" in reasons, "never connected")
            publisher.publish("notice", NoticeV2("hello", "red"))
            async with asyncio.timeout(5):
                async for _topic, payload in sub.events():
                    assert parse(NoticeV1, payload, "notice") == NoticeV1("hello")
                    break
        finally:
            sub.close()
            publisher.close()

    asyncio.run(main())


def test_configuration_stays_strict_about_unknown_keys(tmp_path):
    (tmp_path / "extra.toml").write_text("[transport]\nworkers = 8\nwokers = 9\n")
    with pytest.raises(ConfigError, match="wokers"):
        load_config(str(tmp_path / "extra.toml"))


def test_strict_and_lenient_conversion_differ_only_on_unknown_keys():
    with pytest.raises(ShapeError, match="unknown key"):
        from_plain(Plain, {"name": "a", "colour": "red"})
    assert from_plain(Plain, {"name": "a", "colour": "red"}, lenient=True) == Plain("a")
    for lenient in (False, True):
        assert from_plain(Plain, {"name": "a"}, lenient=lenient) == Plain("a")
        with pytest.raises(ShapeError, match="name: missing"):
            from_plain(Plain, {"count": 1}, lenient=lenient)
        with pytest.raises(ShapeError, match="expected string"):
            from_plain(Plain, {"name": 5}, lenient=lenient)
        with pytest.raises(ShapeError, match=r"\[0\]\.name: missing"):
            from_plain(list[Plain], [{"count": 1}], lenient=lenient)
