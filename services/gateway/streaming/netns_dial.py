"""Connecting to localhost:PORT inside a pod's network namespace, without forking streamd.

A socket belongs to the network namespace it was created in, whatever thread later uses it.
So a short-lived thread joins the pod's namespace with setns(2) (which moves only the
calling thread), creates a non-blocking socket there, and ends; the event loop then
connects and uses that socket. The thread is never reused and never returns to the host's
namespace, so no other work can run in the pod's namespace (shared/nsfs.py does the same
for making namespaces, and says why a fork is not an option in a daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_CLONE_NEWNET = 0x40000000
_CONNECT_TIMEOUT_S = 10.0


async def socket_in_netns(netns_path: str, family: int) -> socket.socket:
    """A non-blocking TCP socket of `family` created in the namespace pinned at `netns_path`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def deliver(result: socket.socket | BaseException) -> None:
        if done.cancelled():
            if isinstance(result, socket.socket):
                result.close()
            return
        if isinstance(result, BaseException):
            done.set_exception(result)
        else:
            done.set_result(result)

    def work() -> None:
        result: socket.socket | BaseException
        try:
            result = _make_socket(netns_path, family)
        except BaseException as exc:  # handed to the awaiting task
            result = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(deliver, result)

    threading.Thread(target=work, name="criplex-netns-dial", daemon=True).start()
    return await done


def _make_socket(netns_path: str, family: int) -> socket.socket:
    """Runs on a fresh thread that dies right after: it is left in the pod's namespace."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
    finally:
        os.close(fd)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def dial_localhost(netns_path: str, port: int, timeout: float = _CONNECT_TIMEOUT_S) -> socket.socket:
    """A connected socket to localhost:`port` in the pod's network namespace ("" = the host's).

    IPv4 loopback first, then IPv6, as "localhost" resolves; the IPv4 error is raised."""
    loop = asyncio.get_running_loop()
    first: OSError | None = None
    for family, address in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port))):
        if netns_path:
            sock = await socket_in_netns(netns_path, family)
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, address)
            return sock
        except TimeoutError:
            sock.close()
            first = first or OSError(f"timed out after {timeout:g}s")
        except OSError as exc:
            sock.close()
            # asyncio words it "Connect call failed (...)": keep the kernel's reason instead.
            first = first or (OSError(exc.errno, os.strerror(exc.errno)) if exc.errno else exc)
        except BaseException:
            sock.close()
            raise
    assert first is not None
    raise first
