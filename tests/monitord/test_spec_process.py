"""Command, environment, working directory and stop signal of the container's process."""

from __future__ import annotations

import pytest

from services.monitord.spec.process import (
    DEFAULT_PATH,
    normalise_signal,
    process_args,
    process_env,
    stop_signal,
    working_dir,
)
from shared.cri import api_pb2
from shared.errors import InvalidArgument

ENTRYPOINT = ("/entry", "-e")
CMD = ("cmd-arg",)


@pytest.mark.parametrize(
    ("command", "args", "entrypoint", "cmd", "expected"),
    [
        ((), (), ENTRYPOINT, CMD, ["/entry", "-e", "cmd-arg"]),  # neither: Entrypoint + Cmd
        ((), ("a1",), ENTRYPOINT, CMD, ["/entry", "-e", "a1"]),  # args only: Entrypoint + args
        (("/bin/x",), (), ENTRYPOINT, CMD, ["/bin/x"]),  # command only: image Cmd dropped too
        (("/bin/x",), ("a1", "a2"), ENTRYPOINT, CMD, ["/bin/x", "a1", "a2"]),  # both: command + args
        ((), (), (), CMD, ["cmd-arg"]),  # no Entrypoint: Cmd alone
        ((), ("/bin/y",), (), CMD, ["/bin/y"]),  # args replace Cmd with no Entrypoint
    ],
)
def test_command_merge_follows_the_kubernetes_rules(command, args, entrypoint, cmd, expected):
    assert process_args(command, args, entrypoint, cmd) == expected


def test_no_command_anywhere_is_invalid():
    with pytest.raises(InvalidArgument, match="no command specified"):
        process_args((), (), (), ())


def test_cri_env_overrides_image_env_by_key_keeping_order():
    env = process_env(("A=1", "PATH=/img", "B=2"), (("B", "cri"), ("C", "3")), "host")
    assert env == ["HOSTNAME=host", "A=1", "PATH=/img", "B=cri", "C=3"]


def test_path_defaults_when_absent_and_hostname_is_set():
    env = process_env(("A=1",), (), "podhost")
    assert f"PATH={DEFAULT_PATH}" in env
    assert "HOSTNAME=podhost" in env


def test_env_value_may_contain_equals_signs():
    assert "X=a=b" in process_env(("X=a=b",), (), "h")


def test_working_dir_prefers_cri_then_image_then_root():
    assert working_dir("/cri", "/img") == "/cri"
    assert working_dir("", "/img") == "/img"
    assert working_dir("", "") == "/"


def test_cri_stop_signal_wins_over_the_image():
    assert stop_signal(api_pb2.SIGINT, "SIGQUIT") == "SIGINT"


def test_runtime_default_uses_the_image_signal_else_sigterm():
    assert stop_signal(api_pb2.RUNTIME_DEFAULT, "QUIT") == "SIGQUIT"
    assert stop_signal(api_pb2.RUNTIME_DEFAULT, "") == "SIGTERM"


def test_cri_realtime_signal_names_are_spelled_for_the_runtime():
    assert stop_signal(api_pb2.SIGRTMINPLUS3, "") == "SIGRTMIN+3"
    assert stop_signal(api_pb2.SIGRTMAXMINUS1, "") == "SIGRTMAX-1"


@pytest.mark.parametrize(
    ("given", "expected"),
    [("TERM", "SIGTERM"), ("SIGTERM", "SIGTERM"), ("sigusr1", "SIGUSR1"), ("15", "SIGTERM"), ("9", "SIGKILL"),
     ("37", "SIGRTMIN+3"), ("RTMIN+2", "SIGRTMIN+2")],
)
def test_image_stop_signal_is_normalised(given, expected):
    assert normalise_signal(given) == expected


def test_unknown_image_stop_signal_is_invalid():
    with pytest.raises(InvalidArgument, match="SIGNOPE"):
        normalise_signal("SIGNOPE")
