"""Port forwarding end to end: localhost inside a real pod's network namespace, through streamd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time

from services.gateway.streaming.netns_dial import socket_in_netns
from shared.cri import api_pb2
from tests.support.pods import Pods, sandbox_config
from tests.support.runtime import wait_for
from tests.support.spdy_client import PORT_FORWARD_PROTOCOLS, SpdyClient, forward_once

HTTPD = ("sh", "-c", "mkdir -p /www && echo hello-pf > /www/index.html && exec busybox httpd -f -p 8080 -h /www")
GET = b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n"


def forward_url(pods: Pods, sid: str) -> str:
    return pods.client.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=sid, port=[8080]),
                                           timeout=10).url


def serving(pods: Pods, cid: str) -> None:
    wait_for(lambda: pods.exec(cid, ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/index.html"]).exit_code == 0,
             20, "httpd to serve in the pod")


def test_port_forward_fetches_a_page_from_the_pod_netns(pod):
    sid, cid = pod.run_container(HTTPD)
    serving(pod, cid)

    async def go() -> tuple[bytes, bytes]:
        client = await SpdyClient.connect(forward_url(pod, sid), PORT_FORWARD_PROTOCOLS)
        assert client.protocol == "portforward.k8s.io"
        try:
            return await forward_once(client, 0, 8080, GET)
        finally:
            await client.close()

    received, error = asyncio.run(go())
    assert error == b""
    assert received.startswith(b"HTTP/1.") and b"hello-pf" in received


def test_a_refused_port_is_an_error_message_and_the_session_lives(pod):
    sid, cid = pod.run_container(HTTPD)
    serving(pod, cid)

    async def go() -> tuple[bytes, bytes, bytes]:
        client = await SpdyClient.connect(forward_url(pod, sid), PORT_FORWARD_PROTOCOLS)
        try:
            refused_data, refused_error = await forward_once(client, 0, 8081, GET)
            received, _ = await forward_once(client, 1, 8080, GET)
            return refused_data, refused_error, received
        finally:
            await client.close()

    refused_data, refused_error, received = asyncio.run(go())
    assert refused_data == b""
    assert b"localhost:8081" in refused_error and b"refused" in refused_error.lower()
    assert b"hello-pf" in received


def test_fifty_connections_eight_at_a_time_on_one_session(pod):
    """Eight in flight: busybox httpd listens with a backlog of 9, and a loaded machine
    (CI's 2 cores) makes it reset what overflows that, which is httpd's limit, not ours."""
    sid, cid = pod.run_container(HTTPD)
    serving(pod, cid)

    async def go() -> list[tuple[bytes, bytes]]:
        client = await SpdyClient.connect(forward_url(pod, sid), PORT_FORWARD_PROTOCOLS)
        in_flight = asyncio.Semaphore(8)

        async def one(i: int) -> tuple[bytes, bytes]:
            async with in_flight:
                return await forward_once(client, i, 8080, GET)

        try:
            return await asyncio.gather(*(one(i) for i in range(50)))
        finally:
            await client.close()

    results = asyncio.run(go())
    failed = [(i, data[:120], error) for i, (data, error) in enumerate(results) if error or b"hello-pf" not in data]
    assert not failed, failed


def test_port_forward_with_crictl(pod, crictl):
    sid, cid = pod.run_container(HTTPD)
    serving(pod, cid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    proc = subprocess.Popen([*crictl, "port-forward", sid, f"{local}:8080"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"Forwarding from 127.0.0.1" in line, line
        body = b""
        deadline = time.monotonic() + 20
        while b"hello-pf" not in body and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
                conn.sendall(GET)
                body = b"".join(iter(lambda: conn.recv(65536), b""))
        assert b"hello-pf" in body
    finally:
        proc.kill()
        proc.wait()


def test_port_forward_to_a_host_network_pod_dials_the_host_loopback(pod):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sandbox = sandbox_config(host_network=True)
        sid = pod.run_pod(sandbox)
        url = pod.client.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=sid, port=[port]),
                                             timeout=10).url

        async def go() -> tuple[bytes, bytes]:
            client = await SpdyClient.connect(url, PORT_FORWARD_PROTOCOLS)
            try:
                task = asyncio.create_task(forward_once(client, 0, port, b"ping"))
                conn, _ = await asyncio.to_thread(listener.accept)
                with conn:
                    assert await asyncio.to_thread(conn.recv, 4) == b"ping"
                    conn.sendall(b"pong")
                return await task
            finally:
                await client.close()

        received, error = asyncio.run(go())
    assert (received, error) == (b"pong", b"")


def test_fifty_concurrent_connections(pod):
    """All 50 at once, against a server with a real backlog: one the test runs itself, listening
    inside the pod's network namespace (busybox httpd's backlog of 9 would be the limit)."""
    sid = pod.run_pod()
    info = json.loads(pod.client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True), timeout=10).info["info"])
    port = 8090

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nhello-pf")
        await writer.drain()
        writer.close()

    async def go() -> list[tuple[bytes, bytes]]:
        listener = await socket_in_netns(info["netns_path"], socket.AF_INET)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        server = await asyncio.start_server(answer, sock=listener)
        client = await SpdyClient.connect(
            pod.client.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=sid, port=[port]),
                                           timeout=10).url, PORT_FORWARD_PROTOCOLS)
        try:
            return await asyncio.gather(*(forward_once(client, i, port, GET) for i in range(50)))
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    results = asyncio.run(go())
    failed = [(i, data[:120], error) for i, (data, error) in enumerate(results) if error or b"hello-pf" not in data]
    assert not failed, failed
