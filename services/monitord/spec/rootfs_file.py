"""Reading a file of a container's root filesystem as the container would see it.

A rootfs comes from an image, so any of its symlinks may point anywhere: `/etc/passwd ->
/etc/shadow-of-the-host`. Every component is therefore opened relative to its parent's
descriptor with O_NOFOLLOW, and symlinks are resolved by hand against the rootfs, the way
chroot(2) would resolve them: an absolute target restarts at the rootfs, `..` never climbs
above it. Nothing on the host outside the rootfs is ever opened.
"""

from __future__ import annotations

import errno
import os
import stat

from shared.errors import InvalidArgument

_MAX_SYMLINKS = 40  # as the kernel's own limit for one lookup
_MAX_BYTES = 16 << 20  # /etc/passwd and /etc/group are small; refuse a planted huge file


def read_in_rootfs(rootfs: str, path: str) -> bytes | None:
    """The content of `path` inside `rootfs`, or None when it does not exist there.

    Raises InvalidArgument when the path cannot be resolved (a symlink loop, a component
    that is not a directory, not a regular file)."""
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs = [root_fd]  # dirs[-1] is where the next component is looked up; dirs[0] is "/"
    try:
        pending = _components(path)
        followed = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(dirs) > 1:
                    os.close(dirs.pop())
                continue
            try:
                target = os.readlink(name, dir_fd=dirs[-1])
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    raise InvalidArgument(f"{path} in the container: a component is not a directory") from exc
                if exc.errno != errno.EINVAL:  # EINVAL: not a symlink, open it below
                    raise
            else:
                followed += 1
                if followed > _MAX_SYMLINKS:
                    raise InvalidArgument(f"{path} in the container: too many levels of symbolic links")
                if target.startswith("/"):
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                pending[:0] = _components(target)
                continue
            if pending:
                dirs.append(_open_dir(name, dirs[-1], path))
            else:
                return _read_regular(name, dirs[-1], path)
        raise InvalidArgument(f"{path} in the container is a directory")
    finally:
        for fd in dirs:
            os.close(fd)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _open_dir(name: str, dir_fd: int, path: str) -> int:
    try:
        return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        # ELOOP: it became a symlink after readlink said otherwise; refuse rather than race.
        raise InvalidArgument(f"{path} in the container: {os.strerror(exc.errno or 0)}") from exc


def _read_regular(name: str, dir_fd: int, path: str) -> bytes:
    try:
        # O_NONBLOCK so that a FIFO planted at the path cannot hang the daemon.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise InvalidArgument(f"{path} in the container: {os.strerror(exc.errno or 0)}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(f"{path} in the container is not a regular file")
        if info.st_size > _MAX_BYTES:
            raise InvalidArgument(f"{path} in the container is larger than {_MAX_BYTES} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
