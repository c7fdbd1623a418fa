"""The stored CRI configs as monitord reads them back."""

from __future__ import annotations

from google.protobuf import json_format

from services.monitord.cri_config import container_tty
from shared.cri import api_pb2


def _stored(config: api_pb2.ContainerConfig, **options: bool) -> str:
    return json_format.MessageToJson(config, indent=None, **options)  # type: ignore[arg-type]


def test_container_tty_reads_the_flag_as_the_gateway_stores_it_and_as_protobuf_json_may_name_it() -> None:
    with_tty = api_pb2.ContainerConfig(tty=True, stdin=True, envs=[api_pb2.KeyValue(key="TERM", value="xterm")])
    without = api_pb2.ContainerConfig(stdin=True, command=["sh"])
    for options in ({"preserving_proto_field_name": True}, {}):
        assert container_tty(_stored(with_tty, **options)) is True
        assert container_tty(_stored(without, **options)) is False
    assert container_tty("{}") is False
