"""Open files and their data: open, create, tmpfile, read, write and friends.

A regular file is opened again from its O_PATH fd through /proc/self/fd,
with the caller's flags (fastpass.fs.openflags says which, and why), so
permission checks are the backing's and the open file description carries
O_DIRECT and O_SYNC as asked.

Reads and writes go to the offsets the kernel sends (pread/pwrite); the
backing fd's own position is never used.  O_APPEND is left off the backing
open: the kernel already turns an append into a write at its end of file
(under the inode lock, so appends from any worker are ordered), and it
sends explicit offsets for RWF_NOAPPEND writes and page-cache writeback,
which a backing O_APPEND would wrongly move to the end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastpass import _linux
from fastpass.fs.attrcache import NO_CAPS
from fastpass.fs.attrs import kill_suidgid
from fastpass.fs.context import CallerUmask, Fs, Request, proc_path
from fastpass.fs.fstypes import SILENT_CLOSE
from fastpass.fs.handles import PASSTHROUGH_MARK
from fastpass.fs.openflags import backing
from fastpass.fs.slots import Inode
from fastpass.kernel import abi, encode
from fastpass.kernel.abi import FopenFlag
from fastpass.shm.counters import OPENS_PASSTHROUGH, OPENS_USERSPACE

if TYPE_CHECKING:
    from fastpass.uring.ring import Ring

_preadv = os.preadv
_clock = time.monotonic_ns
_pwrite = os.pwrite
_pack_write_out = abi.WRITE_OUT.pack
# Plain ints: IntFlag's | and & run in Python, about 0.3 us each on the open path.
_DIRECT_IO, _KEEP_CACHE, _NOFLUSH = int(FopenFlag.DIRECT_IO), int(FopenFlag.KEEP_CACHE), int(FopenFlag.NOFLUSH)


def _opened(fs: Fs, req: Request, inode: Inode, fd: int, flags: int) -> bytes:
    """Publish a backing open as an fh, in kernel passthrough where it is on; the fuse_open_out.
    A file whose size is not its length (procfs, sysfs: fastpass.fs.fstypes) is read and written
    through the worker, never through the page cache or kernel passthrough."""
    if fs.unsized(inode):
        return _published(fs, req, inode, fd, flags, _DIRECT_IO, 0)
    open_flags = backing_id = 0
    if fs.passthrough is not None:
        open_flags, backing_id = fs.passthrough.open(inode, fd, _owner(fs, req), flags)
    return _published(fs, req, inode, fd, flags, open_flags, backing_id)


def _owner(fs: Fs, req: Request) -> int:
    """The uid whose credentials a passthrough registration for this request carries."""
    return req.uid if fs.config.allow_other else fs.credentials.uid


def _published(fs: Fs, req: Request, inode: Inode, fd: int | None, flags: int, open_flags: int,
               backing_id: int) -> bytes:  # fmt: skip
    """The fh of an open (its backing fd, or None where a request that needs one opens it), its
    FOPEN flags beside those passthrough gave; the fuse_open_out."""
    # A filter that needs this file's reads and writes sees every one (FOPEN_DIRECT_IO: none served
    # by the page cache or by kernel passthrough); with passthrough on, the open still carries the
    # inode's backing id, as the kernel requires of every open of an inode in passthrough.
    if fs.filter_data is not None and fs.filter_data(fs, req, inode.nodeid, flags):
        open_flags |= _DIRECT_IO
    elif not backing_id and not open_flags & _DIRECT_IO and fs.kept(inode):
        # (the kernel refuses KEEP_CACHE with passthrough)
        open_flags |= _KEEP_CACHE
    if not fs.filter_flush and (flags & os.O_ACCMODE == os.O_RDONLY or fs.magic(inode) in SILENT_CLOSE):
        # A read-only open has no write whose error its close could report, and a close on a
        # local filesystem reports none (fastpass.fs.fstypes): the kernel sends no FLUSH for it
        # (one round trip fewer per open/close pair).  It flushes anyway under the writeback cache.
        open_flags |= _NOFLUSH
    try:
        fh = fs.handles.add(fd, inode.nodeid, flags | (PASSTHROUGH_MARK if backing_id else 0), req.uid)
    except BaseException:
        if backing_id:
            fs.passthrough.release(inode.nodeid)  # type: ignore[union-attr]
        raise
    if fs.writeback is not None:
        fs.index.opened(inode.nodeid, 1)  # the kernel may keep an outdated size while it is open
    passed = backing_id and not open_flags & _DIRECT_IO
    fs.counters.misc[OPENS_PASSTHROUGH if passed else OPENS_USERSPACE] += 1
    return encode.open_out(fh, open_flags, backing_id)


def _unopened(fs: Fs, req: Request, inode: Inode, flags: int) -> bytes | None:
    """A plain read-only open answered without a backing open of its own (None where it needs
    one).  Only where the open itself needs no check by the backing: the kernel checked the
    caller's permissions (default_permissions), or the caller is root.  With passthrough it
    joins the backing id the caller's uid registered; on the userspace path it is an open whose
    pages the kernel keeps, so a warm file's reads never reach a worker.  A request that does
    need the fh's fd (a read of what is not cached, fsync, lseek...) opens one then, as another
    worker's copy always is (`Fs.file_fd`)."""
    if (flags & ~os.O_LARGEFILE != os.O_RDONLY or not (fs.config.default_permissions or req.uid == 0)
            or fs.unsized(inode)):  # fmt: skip
        return None
    if fs.passthrough is not None:
        open_flags, backing_id = fs.passthrough.join(inode, _owner(fs, req))
        return _published(fs, req, inode, None, flags, open_flags, backing_id) if backing_id else None
    if fs.filter_data is None and fs.kept(inode):
        return _published(fs, req, inode, None, flags, 0, 0)
    return None


def open_(fs: Fs, req: Request, flags: int, open_flags: int) -> bytes:
    to_exec = flags & abi.FMODE_EXEC
    flags = backing(flags)
    inode = fs.inodes.get(req.nodeid)
    if not to_exec:
        unopened = _unopened(fs, req, inode, flags)
        if unopened is not None:
            return unopened
    path = proc_path(fs.inodes.fd(inode))
    if to_exec:
        fd = _open_to_exec(fs, path, flags)
    else:
        fd, flags = _open_writer(fs, flags, lambda f: os.open(path, f | os.O_CLOEXEC))
    try:
        if open_flags & abi.OPEN_KILL_SUIDGID:
            kill_suidgid(fd)
        if flags & os.O_TRUNC or open_flags & abi.OPEN_KILL_SUIDGID:
            fs.refresh(inode.nodeid, fd)
        return _opened(fs, req, inode, fd, flags)
    except BaseException:
        os.close(fd)
        raise


def _writeback_access(fs: Fs, flags: int) -> int:
    """The backing open's flags: under the writeback cache O_WRONLY becomes O_RDWR, because the
    kernel reads a page through the writer's own fh before it writes part of that page."""
    if fs.writeback is not None and flags & os.O_ACCMODE == os.O_WRONLY:
        return flags & ~os.O_ACCMODE | os.O_RDWR
    return flags


def _open_writer(fs: Fs, flags: int, opener: Callable[[int], int]) -> tuple[int, int]:
    """An existing file's backing open, `opener(flags)`, with `_writeback_access`; (fd, flags its fh keeps).

    Where the caller may write the file but not read it, the caller's own open with the kernel's
    flags decides, and the server reopens that file for reading too.  If even the server may not
    read it (not root), the fh stays write-only and a write of part of a page fails (README).
    """
    rw = _writeback_access(fs, flags)
    if rw == flags:
        return opener(flags), flags
    try:
        return opener(rw), rw
    except PermissionError:
        fd = opener(flags)
    try:
        with _linux.fsuid(fs.credentials.uid):
            writer = os.open(proc_path(fd), rw & ~os.O_TRUNC | os.O_CLOEXEC)
    except PermissionError:
        return fd, flags
    os.close(fd)
    return writer, rw


def _open_to_exec(fs: Fs, path: str, flags: int) -> int:
    """execve's open: the caller needs the execute permission only (a 0711 program runs, its
    contents read by the kernel, not the caller), so that is checked as the caller (AT_EACCESS:
    the fsuid, fsgid and groups we run the request with) and the file is opened as the server."""
    if not os.access(path, os.X_OK, effective_ids=True):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    with _linux.fsuid(fs.credentials.uid):
        return os.open(path, flags | os.O_CLOEXEC)


def create(fs: Fs, req: Request, flags: int, mode: int, umask: int, open_flags: int, name: bytes) -> bytes:
    """Create (or open, without O_EXCL) a regular file by name.

    The name may have become something else in the backing since the kernel's
    LOOKUP: opening a FIFO there would block the worker for good.  So the open
    is non-blocking, and a result that is not a regular file is ESTALE, on
    which the VFS looks the name up again and opens what is there itself.
    The file is made with O_EXCL first, so fastpass knows whether it made it:
    if answering fails afterwards (a full inode table, say), a file it made is
    removed again and the backing is left as it was.
    """
    exclusive = flags & os.O_EXCL
    flags = backing(flags)
    dir_fd = fs.inode_fd(req.nodeid)
    how = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        new_flags = _writeback_access(fs, flags)  # a file an open makes is readable to it, whatever its mode
        with CallerUmask(umask):
            fd = os.open(name, new_flags | how | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
        flags = new_flags
        made = True
    except FileExistsError:
        if exclusive:
            raise
        fd, flags = _open_writer(fs, flags, lambda f: os.open(name, f | how, dir_fd=dir_fd))
        made = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.ESTALE, "not a regular file any more")
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
        if open_flags & abi.OPEN_KILL_SUIDGID:
            kill_suidgid(fd)
        if made:
            fs.changed(req.nodeid)
        t0 = _clock()
        # the inode number spares the stat by name where this worker holds no fd for it (a new file)
        inode, st = fs.inodes.lookup(fs.inodes.get(req.nodeid), name, st.st_ino)
        try:
            return fs.entry(inode, st, t0, NO_CAPS if made else 0) + _opened(fs, req, inode, fd, flags)
        except BaseException:
            fs.inodes.forget(inode.nodeid, 1)  # the kernel never hears of this lookup
            raise
    except BaseException:
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        raise


def tmpfile(fs: Fs, req: Request, flags: int, mode: int, umask: int, open_flags: int, name: bytes) -> bytes:
    flags = _writeback_access(fs, backing(flags))
    with CallerUmask(umask):
        fd = os.open(proc_path(fs.inode_fd(req.nodeid)), flags | os.O_TMPFILE | os.O_CLOEXEC, mode)
    try:
        path_fd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
        t0 = _clock()
        inode = fs.inodes.add(path_fd, os.fstat(path_fd))
        try:
            return fs.entry(inode, os.fstat(fd), t0, NO_CAPS) + _opened(fs, req, inode, fd, flags)
        except BaseException:
            fs.inodes.forget(inode.nodeid, 1)  # the kernel never hears of this lookup
            raise
    except BaseException:
        os.close(fd)
        raise


def read(fs: Fs, req: Request, fh: int, offset: int, size: int, read_flags: int, lock_owner: int, flags: int) -> memoryview:
    view = fs.read_view[:size]
    return read_done(fs, req, view, _preadv(fs.file_fd(fh), [view], offset))


def read_done(fs: Fs, req: Request, view: memoryview, n: int) -> memoryview:
    """The reply to a READ that got `n` bytes into `view`; the read counts as an access (atime)."""
    if fs.cache is not None:
        fs.cache.read(req.nodeid)
    return view[:n]


def write(fs: Fs, req: Request, fh: int, offset: int, size: int, write_flags: int, lock_owner: int, flags: int,
          data: memoryview) -> bytes:  # fmt: skip
    fd = fs.file_fd(fh)
    return write_done(fs, req, (fd, write_flags), _pwrite_buffered(fd, data, offset, write_flags))


def _pwrite_buffered(fd: int, data: memoryview, offset: int, write_flags: int) -> int:
    """A WRITE that is not O_DIRECT for the application.

    The kernel's writeback of dirty pages (WRITE_CACHE: the writeback cache's, and shared mmap's)
    goes through any writable fh of the inode, an O_DIRECT one too, and the last page of a file
    is short: the backing refuses
    that write (EINVAL) where O_DIRECT needs alignment.  It is then written without O_DIRECT,
    which is dropped from this worker's own fd for the one call (a worker is one thread).
    A file that takes no pwrite (ESPIPE: procfs's seq_file files, /proc/PID/comm, clear
    FMODE_PWRITE but seek) is written at this worker's own fd's position, set to the offset.
    """
    try:
        return _pwrite(fd, data, offset)
    except OSError as e:
        if e.errno == errno.ESPIPE:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.write(fd, data)
        if e.errno != errno.EINVAL or not write_flags & abi.WRITE_CACHE:
            raise
        mode = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not mode & os.O_DIRECT:
            raise
    fcntl.fcntl(fd, fcntl.F_SETFL, mode & ~os.O_DIRECT)
    try:
        return _pwrite(fd, data, offset)
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, mode)


def write_done(fs: Fs, req: Request, target: tuple[int, int], n: int) -> bytes:
    """The reply to a WRITE of `n` bytes to (fd, write_flags): the backing's attributes from now on."""
    fd, write_flags = target
    if write_flags & abi.WRITE_KILL_SUIDGID:
        kill_suidgid(fd)
    fs.refresh(req.nodeid, fd)
    if write_flags & abi.WRITE_CACHE and fs.writeback is not None:
        fs.written_back(req.nodeid)
    return _pack_write_out(n)


def flush(fs: Fs, req: Request, fh: int, lock_owner: int) -> None:
    """close() of a duplicate reports deferred write errors (NFS, quota) like the app's close would.

    Only of the fd this worker holds for the fh: a backing file reports the errors of writes made
    through it, and none of those made through another worker's, so a worker that holds none
    (it wrote nothing through it, or gave its copy back, `fastpass.fs.fds`) opens none to flush.
    """
    fd = fs.handles.local(fh)
    if fd is not None:
        os.close(fs.fds.opening(os.dup, fd))


def release(fs: Fs, req: Request, fh: int, flags: int, release_flags: int, lock_owner: int) -> None:
    nodeid, flags = fs.handles.release(fh)
    if flags & PASSTHROUGH_MARK and fs.passthrough is not None:
        # The kernel read or wrote it without us: before the cache may answer for it again, it
        # forgets what a write changed, or what a read may have (atime).
        if flags & os.O_ACCMODE != os.O_RDONLY:
            fs.changed(nodeid)
        elif fs.cache is not None:
            fs.cache.read(nodeid)
        fs.passthrough.release(nodeid)
    elif fs.writeback is not None:
        fs.index.opened(nodeid, -1)


def fsync(fs: Fs, req: Request, fh: int, fsync_flags: int) -> None:
    fd = fs.file_fd(fh)
    if fsync_flags & abi.FSYNC_FDATASYNC:
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def fallocate(fs: Fs, req: Request, fh: int, offset: int, length: int, mode: int) -> None:
    fd = fs.file_fd(fh)
    _linux.fallocate(fd, mode, offset, length)
    fallocate_done(fs, req, fd, 0)


def fallocate_done(fs: Fs, req: Request, fd: int, result: int) -> None:
    fs.refresh(req.nodeid, fd)


def lseek(fs: Fs, req: Request, fh: int, offset: int, whence: int) -> bytes:
    """SEEK_DATA and SEEK_HOLE (the kernel answers the other whences itself).

    Under the writeback cache the kernel holds written data, and the size it makes, that the
    backing has not seen yet (a new file's 1 MiB written, not yet written back, is still 0 bytes
    there): the backing's answer would say ENXIO or a hole where the application just wrote.
    The kernel sends LSEEK without writing back first, and only it knows what it holds, so the
    answer is ENOSYS: from then on the kernel answers every SEEK_DATA/SEEK_HOLE on the connection
    from its own size, with no request (fs/fuse/file.c, fuse_lseek: no_lseek, generic_file_llseek):
    the whole file is data, as on a filesystem without holes.
    """
    if fs.writeback is not None:
        raise OSError(errno.ENOSYS, "the kernel's own size answers under the writeback cache")
    return abi.LSEEK_OUT.pack(os.lseek(fs.file_fd(fh), offset, whence))


_MAX_32 = 0xFFFFF000  # the largest page-aligned count a 32-bit reply can carry


def _copy(fs: Fs, fh_in: int, off_in: int, nodeid_out: int, fh_out: int, off_out: int, length: int,
          flags: int) -> int:  # fmt: skip
    if flags:
        raise OSError(22, "copy_file_range flags must be 0")
    out = fs.file_fd(fh_out)
    n = os.copy_file_range(fs.file_fd(fh_in), out, length, off_in, off_out)
    fs.refresh(nodeid_out, out)
    return n


def copy_file_range(fs: Fs, req: Request, fh_in: int, off_in: int, nodeid_out: int, fh_out: int, off_out: int,
                    length: int, flags: int) -> bytes:  # fmt: skip
    return _pack_write_out(_copy(fs, fh_in, off_in, nodeid_out, fh_out, off_out, min(length, _MAX_32), flags))


def copy_file_range_64(fs: Fs, req: Request, fh_in: int, off_in: int, nodeid_out: int, fh_out: int, off_out: int,
                       length: int, flags: int) -> bytes:  # fmt: skip
    """7.45: the same with a 64-bit count in the reply."""
    return abi.COPY_FILE_RANGE_OUT.pack(_copy(fs, fh_in, off_in, nodeid_out, fh_out, off_out, length, flags))


# --- the ring path (fastpass.worker): the backing call of each data op that may block goes to
# the worker's io_uring.  `*_submit(fs, req, ring, tag, area, *args)` resolves the fh and
# prepares the call (`area`: the request's page-aligned buffer, free for a READ's data once
# the request is decoded) and returns what its `*_done(fs, req, state, result)` needs to turn
# a successful result into the reply; the plain handlers above are the same `*_done` around a
# synchronous syscall.  A negative result is the errno reply, made by the worker.  A submit
# that can answer without waiting makes no call and returns the reply itself.
#
# Buffered reads and writes stay off the ring where they would not wait, measured on ext4
# (Linux 6.18, one at a time from Python): a 4 KiB read the page cache holds is 0.52 us as a
# preadv2(RWF_NOWAIT) and 1.5 us on the ring; a buffered write is 0.75 us inline (70 us for
# 1 MiB) and 49.7 us on the ring (165 us), which hands every buffered write to an io-wq
# thread because ext4 takes none without waiting.  So a buffered READ first takes what the
# page cache has, and the ring reads the rest; a buffered WRITE is a pwrite; O_DIRECT reads
# and writes (the app's open flags, which the backing open carries) always go to the ring.


def read_submit(fs: Fs, req: Request, ring: Ring, tag: int, area: memoryview, fh: int, offset: int, size: int,
                read_flags: int, lock_owner: int, flags: int) -> object:  # fmt: skip
    view = area[:size]
    fd = fs.file_fd(fh)
    cached = 0
    if not flags & os.O_DIRECT:
        try:
            cached = _preadv(fd, [view], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            pass  # none of it is cached
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:  # a backing that cannot read without waiting: the ring
                raise
        else:
            if cached in (0, size):  # 0: at end of file (a NOWAIT read of uncached data is EAGAIN)
                return read_done(fs, req, view, cached)
    ring.readv(fd, view[cached:], offset + cached, tag)
    return view, cached


def read_rest_done(fs: Fs, req: Request, state: tuple[memoryview, int], n: int) -> memoryview:
    """The reply to a READ whose first `cached` bytes came from the page cache, the rest (n) from the ring."""
    view, cached = state
    return read_done(fs, req, view, cached + n)


def write_submit(fs: Fs, req: Request, ring: Ring, tag: int, area: memoryview, fh: int, offset: int, size: int,
                 write_flags: int, lock_owner: int, flags: int, data: memoryview) -> object:  # fmt: skip
    fd = fs.file_fd(fh)
    if not flags & os.O_DIRECT:
        return write_done(fs, req, (fd, write_flags), _pwrite_buffered(fd, data, offset, write_flags))
    ring.writev(fd, data, offset, tag)
    return fd, write_flags


def fsync_submit(fs: Fs, req: Request, ring: Ring, tag: int, area: memoryview, fh: int, fsync_flags: int) -> None:
    ring.fsync(fs.file_fd(fh), bool(fsync_flags & abi.FSYNC_FDATASYNC), tag)


def fsync_done(fs: Fs, req: Request, state: None, result: int) -> None:
    return None


def fallocate_submit(fs: Fs, req: Request, ring: Ring, tag: int, area: memoryview, fh: int, offset: int,
                     length: int, mode: int) -> int:  # fmt: skip
    fd = fs.file_fd(fh)
    ring.fallocate(fd, mode, offset, length, tag)
    return fd
