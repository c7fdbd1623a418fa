"""Writing a layer blob into a directory, entry by entry, without ever following a link.

tarfile's own extraction resolves names through the file system, so a symlink
planted earlier in the archive could redirect a later write onto the host. Here
every directory is opened component by component from the layer root with
O_NOFOLLOW, and every entry is created relative to its parent's descriptor with a
call that fails rather than follows (O_CREAT|O_EXCL, mkdirat, symlinkat, mknodat,
linkat without AT_SYMLINK_FOLLOW). `tarsafety` has already judged the entry; this
is the second, independent line.
"""

from __future__ import annotations

import contextlib
import decimal
import errno
import logging
import os
import stat
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

from services.storaged.blob_reader import BlobReader
from services.storaged.compression import MAGIC_BYTES, VerifyingReader, compression_for, decompressed
from services.storaged.mount import start_writeback, syncfs
from services.storaged.tarsafety import Header, Kind, LayerPaths, Op, Step, UnsafeEntry, kind_of, layer_xattrs
from services.storaged.usage import DiskUsage, disk_usage
from shared.errors import Aborted, DataLoss, InvalidArgument

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_TAR_READ = 256 << 10
# A big file's data starts its way to disk every 8 MiB, so the syncfs that ends the unpack
# finds little left to write: a pull's last layer commits ~50 ms sooner per 200 MB.
_WRITEBACK_AFTER = 8 << 20
# Go's archive/tar allows 1 MiB of pax records per entry; real ones are a few hundred bytes.
_META_MAX = 1 << 20
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)
_NODE_TYPES = {Kind.CHAR_DEVICE: stat.S_IFCHR, Kind.BLOCK_DEVICE: stat.S_IFBLK, Kind.FIFO: stat.S_IFIFO}
OPAQUE_XATTR = "trusted.overlay.opaque"  # overlayfs.rst "whiteouts and opaque directories"
# Errors that mean the archive's tree cannot be built as it claims, not that the host failed.
_ARCHIVE_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EINVAL}
# Xattrs this file system or inode type cannot hold (user.* on a symlink, an unknown
# namespace) are dropped, as GNU tar and containerd do, rather than failing the layer.
_XATTR_SKIP_ERRNOS = {errno.EOPNOTSUPP, errno.EPERM}


def unpack_blob(blob: BlobReader, media_type: str, diff_id: str, dest: Path, cancel: threading.Event,
                pause: Callable[[], None] = lambda: None) -> DiskUsage:
    """Create `dest` holding the layer in `blob`; raise if it is unsafe or does not hash to `diff_id`.

    `pause` runs between entries and between 1 MiB of a file (pulls yield to pod starts).

    The caller removes `dest` on failure. When this returns, a growing blob has been verified
    by imaged, the blob is deleted, and everything written is on disk.
    """
    compression = compression_for(media_type, blob.magic(MAGIC_BYTES))
    os.mkdir(dest, 0o755)
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        with decompressed(blob, compression) as stream:
            reader = VerifyingReader(stream, diff_id)
            end = _LayerWriter(root_fd, cancel, pause).write(reader)
            if not reader.only_padding_after(end):
                raise InvalidArgument("layer has data after the end of its tar archive")
        if not reader.matches:
            raise DataLoss(f"layer content hashes to {reader.digest}, not to its diff_id {diff_id}")
        blob.wait_verified()
        blob.consume()
        syncfs(root_fd)
    finally:
        os.close(root_fd)
    return disk_usage(dest)


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole into memory before we see it; bound that."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > _META_MAX:
            raise tarfile.HeaderError(f"{self.size}-byte extended header (more than {_META_MAX})")
        return super()._proc_member(tarfile_)


class _LayerWriter:
    def __init__(self, root_fd: int, cancel: threading.Event, pause: Callable[[], None]) -> None:
        self._root = root_fd
        self._cancel = cancel
        self._pause = pause
        self._paths = LayerPaths()
        # Directory mtimes are set last: creating their children would change them again.
        self._dir_mtimes: dict[tuple[str, ...], int] = {}
        self._parent_path: tuple[str, ...] = ()
        self._parent_fd = root_fd  # entries come grouped by directory; keep the last one open

    def write(self, stream: VerifyingReader) -> int:
        """Write every entry; return the offset where the archive ended."""
        try:
            # tarfile's stream mode reads its source `bufsize` bytes at a time (10 KiB by
            # default): every read is a trip through the decompressor and the hash in
            # Python, holding the GIL. Bigger reads let parallel unpacks use both cores.
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo, bufsize=_TAR_READ) as tar:
                while (member := _next(tar)) is not None:
                    tar.members.clear()  # stream mode would keep every header in memory
                    if self._cancel.is_set():
                        raise Aborted("storaged is stopping")
                    self._pause()
                    self._entry(tar, member)
                end = tar.offset
            self._set_dir_mtimes()
            return end
        except tarfile.TarError as exc:
            raise InvalidArgument(f"layer is not a valid tar stream: {exc}") from None
        finally:
            self._set_parent((), self._root)

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        header = Header(member.name, kind_of(member.type), member.linkname, member.uid, member.gid,
                        member.devmajor, member.devminor)
        step = self._paths.plan(header)
        try:
            self._execute(step, tar, member)
        except OSError as exc:
            if exc.errno in _ARCHIVE_ERRNOS:
                raise UnsafeEntry(f"{member.name!r}: {exc.strerror}") from None
            raise
        except (OverflowError, ValueError) as exc:  # mtime, ids or device numbers out of range
            raise UnsafeEntry(f"{member.name!r}: {exc}") from None

    def _execute(self, step: Step, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if step.op is Op.SKIP:
            return
        if step.op is Op.OPAQUE:
            with _Dir(self._open_dir(step.path, create=True)) as fd:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            return
        if step.kind is Kind.DIRECTORY and step.path == ():
            self._directory_metadata(self._root, member, step)
            return
        parent = self._parent(step.path[:-1])
        name = step.path[-1]
        if step.replace:
            os.unlink(name, dir_fd=parent)
        if step.op is Op.WHITEOUT:
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        elif step.kind is Kind.DIRECTORY:
            self._directory(parent, name, member, step)
        elif step.kind is Kind.FILE:
            self._file(parent, name, tar, member)
        elif step.kind is Kind.SYMLINK:
            os.symlink(member.linkname, name, dir_fd=parent)
            self._node_metadata(parent, name, member, chmod=False)
        elif step.kind is Kind.HARDLINK:
            with _Dir(self._open_dir(step.link[:-1], create=False)) as source:
                os.link(step.link[-1], name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
        else:
            assert step.kind is not None
            device = 0 if step.kind is Kind.FIFO else os.makedev(member.devmajor, member.devminor)
            os.mknod(name, _NODE_TYPES[step.kind] | 0o600, device, dir_fd=parent)
            self._node_metadata(parent, name, member, chmod=True)

    def _directory(self, parent: int, name: str, member: tarfile.TarInfo, step: Step) -> None:
        # EEXIST: this layer made it before (explicitly or as a parent); tarsafety checked it is one.
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        with _Dir(os.open(name, _DIR_FLAGS, dir_fd=parent)) as fd:
            self._directory_metadata(fd, member, step)

    def _directory_metadata(self, fd: int, member: tarfile.TarInfo, step: Step) -> None:
        _owner_mode_xattrs(fd, member)
        if step.opaque:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        self._dir_mtimes[step.path] = _mtime_ns(member)

    def _file(self, parent: int, name: str, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            source = tar.extractfile(member)
            assert source is not None
            with os.fdopen(fd, "wb", closefd=False) as out:
                written = 0
                while chunk := source.read(_CHUNK):
                    if self._cancel.is_set():
                        raise Aborted("storaged is stopping")
                    self._pause()
                    out.write(chunk)
                    written += len(chunk)
                    if written >= _WRITEBACK_AFTER:
                        out.flush()
                        start_writeback(fd)
                        written = 0
            _owner_mode_xattrs(fd, member)
            mtime = _mtime_ns(member)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)

    def _node_metadata(self, parent: int, name: str, member: tarfile.TarInfo, *, chmod: bool) -> None:
        """Owner, mode, xattrs and mtime of a symlink or device node, which cannot be opened for it."""
        os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if chmod:
            # fchmodat cannot refuse to follow on Linux; `name` is the node we just made.
            os.chmod(name, member.mode & 0o7777, dir_fd=parent)
        via_proc = f"/proc/self/fd/{parent}/{name}"  # *xattrat calls are Linux 6.13+; this resolves name
        for key, value in layer_xattrs(member.pax_headers).items():
            _set_xattr(via_proc, key, value, follow_symlinks=False)
        mtime = _mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def _parent(self, path: tuple[str, ...]) -> int:
        if path != self._parent_path:
            self._set_parent(path, self._open_dir(path, create=True))
        return self._parent_fd

    def _set_parent(self, path: tuple[str, ...], fd: int) -> None:
        if self._parent_fd != self._root:
            os.close(self._parent_fd)
        self._parent_path, self._parent_fd = path, fd

    def _open_dir(self, path: tuple[str, ...], *, create: bool) -> int:
        """A new descriptor on directory `path`, reached from the root without following any link."""
        fd = os.dup(self._root)
        try:
            for name in path:
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=fd)
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(child, 0o755)  # not whatever the daemon's umask left
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _set_dir_mtimes(self) -> None:
        for path, mtime in self._dir_mtimes.items():
            with _Dir(self._open_dir(path, create=False)) as fd:
                os.utime(fd, ns=(mtime, mtime))


def _next(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except (ValueError, UnicodeError, OverflowError) as exc:  # tarfile's parsers fail in these too
        raise InvalidArgument(f"layer has a malformed tar header: {exc}") from None


class _Dir:
    """Closes a directory descriptor on exit."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


def _owner_mode_xattrs(fd: int, member: tarfile.TarInfo) -> None:
    # chown clears set-id bits and file capabilities, so it goes first.
    os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, member.mode & 0o7777)
    for key, value in layer_xattrs(member.pax_headers).items():
        _set_xattr(fd, key, value)


def _set_xattr(target: int | str, key: str, value: bytes, *, follow_symlinks: bool = True) -> None:
    try:
        os.setxattr(target, key, value, follow_symlinks=follow_symlinks)
    except OSError as exc:
        if exc.errno not in _XATTR_SKIP_ERRNOS:
            raise
        log.debug("xattr %s not kept: %s", key, exc.strerror)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    # tarfile turns a pax mtime ("1700000000.25") into a float, which cannot hold nanoseconds.
    exact = member.pax_headers.get("mtime")
    if exact is not None:
        with contextlib.suppress(ArithmeticError, ValueError):
            return int(decimal.Decimal(exact).scaleb(9))
    return round(member.mtime * 1_000_000_000)
