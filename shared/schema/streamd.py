"""streamd's public surface: prepare a streaming session (exec, attach, port-forward) and get its URL.

The gateway validates a CRI Exec/Attach/PortForward against its view and sends streamd
everything the session will need, so streamd never asks another daemon anything: a
session keeps working while any other daemon restarts. streamd answers with the URL the
kubelet (or crictl) then connects to, good for one connection within `streamd.token_ttl`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.wire import Method


@dataclass(frozen=True)
class OciRuntimeRef:
    path: str  # the runtime binary (runc, crun)
    root: str  # its --root


@dataclass(frozen=True)
class ExecSession:
    container_id: str
    runtime: OciRuntimeRef
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class AttachSession:
    container_id: str
    attach_socket: str  # conmon's SOCK_SEQPACKET socket, by its short path (sun_path is 108 bytes)
    ctl_fifo: str  # conmon's control FIFO: "1 <height> <width>\n" resizes the terminal
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class PortForwardSession:
    sandbox_id: str
    netns_path: str  # the pod's pinned network namespace; "" = the host's (a host-network pod)
    ports: tuple[int, ...] = ()  # informational: the client names the port of each connection


@dataclass(frozen=True)
class SessionUrl:
    url: str  # http(s)://<address>:<port>/<exec|attach|portforward>/<token>


PREPARE_EXEC = Method("prepare_exec", ExecSession, SessionUrl)
PREPARE_ATTACH = Method("prepare_attach", AttachSession, SessionUrl)
PREPARE_PORT_FORWARD = Method("prepare_port_forward", PortForwardSession, SessionUrl)
