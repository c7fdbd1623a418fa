"""The container's process: argv, environment, working directory and stop signal.

The argv follows the Docker/Kubernetes rules: the CRI `command` replaces the image's
Entrypoint and, once it does, the image's Cmd is dropped too; the CRI `args` replace Cmd.
"""

from __future__ import annotations

import signal

from shared.cri import api_pb2
from shared.errors import InvalidArgument

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def process_args(
    command: tuple[str, ...], args: tuple[str, ...], entrypoint: tuple[str, ...], cmd: tuple[str, ...]
) -> list[str]:
    if command:
        argv = [*command, *args]
    elif args:
        argv = [*entrypoint, *args]
    else:
        argv = [*entrypoint, *cmd]
    if not argv:
        raise InvalidArgument("no command specified: neither the container config nor the image names one")
    return argv


def process_env(image_env: tuple[str, ...], cri_env: tuple[tuple[str, str], ...], hostname: str) -> list[str]:
    """HOSTNAME first, then the image's, then the CRI's; a later key replaces an earlier one in place."""
    merged: dict[str, str] = {"HOSTNAME": hostname}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    for key, value in cri_env:
        merged[key] = value
    merged.setdefault("PATH", DEFAULT_PATH)
    return [f"{key}={value}" for key, value in merged.items()]


def working_dir(cri_dir: str, image_dir: str) -> str:
    return cri_dir or image_dir or "/"


def stop_signal(cri_signal: int, image_signal: str) -> str:
    """The CRI's signal unless RUNTIME_DEFAULT, else the image's, else SIGTERM; always "SIGxxx"."""
    if cri_signal != api_pb2.RUNTIME_DEFAULT:
        return _from_cri_enum(api_pb2.Signal.Name(cri_signal))
    if not image_signal:
        return "SIGTERM"
    return normalise_signal(image_signal)


def normalise_signal(name: str) -> str:
    """"TERM", "SIGTERM", "sigterm", "15", "SIGRTMIN+3", "RTMIN+3" -> a name conmon and runc accept."""
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        try:
            return signal.Signals(number).name
        except ValueError:
            return _realtime_name(number, name)
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text in signal.Signals.__members__ or text in ("SIGRTMIN", "SIGRTMAX"):
        return text
    for base in ("SIGRTMIN+", "SIGRTMAX-"):
        if text.startswith(base) and text[len(base) :].isdigit():
            return text
    raise InvalidArgument(f"unknown stop signal {name!r}")


def _from_cri_enum(name: str) -> str:
    # The CRI spells real-time signals SIGRTMINPLUS3 / SIGRTMAXMINUS3.
    if name.startswith("SIGRTMINPLUS"):
        return "SIGRTMIN+" + name.removeprefix("SIGRTMINPLUS")
    if name.startswith("SIGRTMAXMINUS"):
        return "SIGRTMAX-" + name.removeprefix("SIGRTMAXMINUS")
    return name


def _realtime_name(number: int, original: str) -> str:
    low, high = signal.SIGRTMIN, signal.SIGRTMAX
    if number == low:
        return "SIGRTMIN"
    if low < number <= high:
        return f"SIGRTMIN+{number - low}"
    raise InvalidArgument(f"unknown stop signal {original!r}")
