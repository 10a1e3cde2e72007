"""Directories: opendir, readdir, readdirplus, releasedir, fsyncdir.

Offsets are the backing's own d_off cookies from getdents64, so they stay
valid across calls and across seekdir/telldir exactly as on the backing.
Entries read from the backing but not sent (the reply was full) wait in
the handle for the next READDIR at that offset; any other offset seeks the
backing directory.

READDIRPLUS counts a lookup for each entry it sends with a nodeid, and only
for those: "." and ".." go out with nodeid 0, which the kernel neither
links nor forgets, and an entry that vanished since getdents goes out
without attributes.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time

from fastpass import _linux
from fastpass.fs.context import Fs, Request, proc_path
from fastpass.fs.fds import BATCH
from fastpass.fs.handles import DirHandle
from fastpass.fs.inodes import O_PATH_FLAGS
from fastpass.fs.slots import Inode
from fastpass.kernel import encode
from fastpass.kernel.abi import FopenFlag
from fastpass.uring.ring import PART, Ring

_DIRENT64 = struct.Struct("<QqHB")  # d_ino, d_off, d_reclen, d_type; d_name follows
_NAME_AT = _DIRENT64.size
DOTS = (b".", b"..")  # the names a listing has that the kernel never looks up
_clock = time.monotonic_ns
# The kernel caches the listing (CACHE_DIR) and keeps it across opens (KEEP_CACHE) until the
# watcher drops the directory's pages, or the kernel its own after a change through the mount.
_CACHED_LISTING = FopenFlag.CACHE_DIR | FopenFlag.KEEP_CACHE


def opendir(fs: Fs, req: Request, flags: int, open_flags: int) -> bytes:
    """Open a directory; where the watcher keeps it coherent, the kernel caches its listing."""
    inode = fs.inodes.get(req.nodeid)
    fd = os.open(proc_path(fs.inodes.fd(inode)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fh = fs.handles.add(DirHandle(fd), req.nodeid, os.O_RDONLY | os.O_DIRECTORY, req.uid)
    except BaseException:
        os.close(fd)
        raise
    return encode.open_out(fh, _CACHED_LISTING if fs.kept(inode) else 0)


def releasedir(fs: Fs, req: Request, fh: int, flags: int, release_flags: int, lock_owner: int) -> None:
    fs.handles.release(fh)


def fsyncdir(fs: Fs, req: Request, fh: int, fsync_flags: int) -> None:
    os.fsync(fs.dir_handle(fh).fd)


def _fill(fs: Fs, h: DirHandle) -> bool:
    """Read the next batch of backing entries into h.pending; False at the end."""
    buf = fs.dirent_buf
    n = _linux.getdents64(h.fd, buf)
    if n == 0:
        return False
    raw = buf.raw[:n]
    unpack = _DIRENT64.unpack_from
    pending = h.pending
    pos = 0
    while pos < n:
        ino, off, reclen, dtype = unpack(raw, pos)
        name = raw[pos + _NAME_AT : raw.index(b"\0", pos + _NAME_AT)]
        pending.append((ino, off, dtype, name))
        pos += reclen
    return True


def _entries(fs: Fs, nodeid: int, h: DirHandle, offset: int):
    """Yield pending entries from `offset` on; the consumer pops what it sends.

    A seek opens the directory afresh: ext4 returns nothing after lseek(fd, 0)
    on a directory fd whose first getdents was at its end-of-directory cookie
    (measured on Linux 6.18), which is what a worker that served only the
    final READDIR of a listing has.  The new open takes the handle's fd number
    (dup2): a handle given back meanwhile (`fastpass.fs.fds`) closes that number later.
    """
    if offset != h.pos:
        fd = fs.fds.opening(fs.open_dir, nodeid)
        os.dup2(fd, h.fd, inheritable=False)
        os.close(fd)
        if offset:
            os.lseek(h.fd, offset, os.SEEK_SET)
        h.pending.clear()
        h.pos = offset
    while h.pending or _fill(fs, h):
        yield h.pending[0]


def readdir(fs: Fs, req: Request, fh: int, offset: int, size: int, read_flags: int, lock_owner: int, flags: int) -> bytes:
    h = fs.dir_handle(fh)
    if fs.cache is not None:
        fs.cache.read(req.nodeid)
    out = []
    used = 0
    dirent = encode.dirent
    for ino, off, dtype, name in _entries(fs, req.nodeid, h, offset):
        rec = dirent(ino, off, dtype, name)
        if used + len(rec) > size:
            break
        out.append(rec)
        used += len(rec)
        h.pending.popleft()
        h.pos = off
    return b"".join(out)


def _take_plus(fs: Fs, req: Request, fh: int, offset: int, size: int) -> list[tuple[int, int, int, bytes]]:
    """The entries (d_ino, d_off, d_type, name) that fit a READDIRPLUS reply of `size`,
    taken from the handle: they are sent, with or without attributes."""
    h = fs.dir_handle(fh)
    if fs.cache is not None:
        fs.cache.read(req.nodeid)
    taken = []
    used = 0
    for entry in _entries(fs, req.nodeid, h, offset):
        need = encode.dirent_size(entry[3], True)
        if used + need > size:
            break
        taken.append(entry)
        used += need
        h.pending.popleft()
        h.pos = entry[1]
    return taken


def _plus_reply(taken: list[tuple[int, int, int, bytes]], entries: list[bytes]) -> bytes:
    out = []
    dirent = encode.dirent
    for (ino, off, dtype, name), entry in zip(taken, entries):
        out.append(entry)
        out.append(dirent(ino, off, dtype, name))
    return b"".join(out)


def _plus_entry(fs: Fs, parent: Inode, ino: int, name: bytes) -> bytes:
    """The fuse_entry_out of one name, resolved here (a lookup the kernel will forget)."""
    if name in DOTS:
        return _NO_ENTRY
    try:
        t0 = _clock()
        inode, st = fs.inodes.lookup(parent, name, ino)
        return fs.entry(inode, st, t0)
    except OSError:
        return _NO_ENTRY  # gone since getdents: the name without attributes


def readdirplus(fs: Fs, req: Request, fh: int, offset: int, size: int, read_flags: int, lock_owner: int,
                flags: int) -> bytes:  # fmt: skip
    taken = _take_plus(fs, req, fh, offset, size)
    parent = fs.inodes.get(req.nodeid)
    return _plus_reply(taken, [_plus_entry(fs, parent, ino, name) for ino, _off, _type, name in taken])


# The ring path (fastpass.fs.table.RING): the entries this worker does not hold yet are opened
# (O_PATH) as one batch on the worker's io_uring, so a cold backing loads their inodes in
# parallel; each open's fd is then adopted (fstat, file handle) when the batch is done.  Names
# the worker holds are resolved by a synchronous stat then: their inodes are in memory, and so
# are the names past BATCH while fds are short (`fastpass.fs.fds`).  The batch opens relative
# to its own dup of the directory's fd: an open runs in an io-wq thread, which reads its
# directory fd when it runs, and the directory's O_PATH fd may be given back meanwhile.


def readdirplus_submit(fs: Fs, req: Request, ring: Ring, tag: int, area: memoryview, fh: int, offset: int,
                       size: int, read_flags: int, lock_owner: int, flags: int) -> object:  # fmt: skip
    taken = _take_plus(fs, req, fh, offset, size)
    inodes = fs.inodes
    parent = inodes.get(req.nodeid)
    room = max(BATCH, fs.fds.free())
    parts = []  # per taken entry: the number of its call in the batch, or -1 (resolved in done)
    calls = 0
    for ino, _off, _type, name in taken:
        if name in DOTS or calls == room or inodes.holds(parent, ino):
            parts.append(-1)
        else:
            parts.append(calls)
            calls += 1
    if not calls:
        return readdirplus_done(fs, req, (taken, parent, parts, -1), [])
    pfd = fs.fds.opening(os.dup, inodes.fd(parent))
    for (_ino, _off, _type, name), part in zip(taken, parts):
        if part >= 0:
            ring.open_path(pfd, name, O_PATH_FLAGS, tag + part * PART)
    ring.submit()  # the opens check the credentials in force at the submit: the caller's, now
    return taken, parent, parts, pfd


def readdirplus_done(fs: Fs, req: Request, state: tuple, results: list[int]) -> bytes:
    """The reply once every open of the batch has completed (results: an fd or -errno each)."""
    taken, parent, parts, pfd = state
    if pfd >= 0:
        os.close(pfd)
    entries = []
    adopt = fs.inodes.adopt
    try:
        for (ino, _off, _type, name), part in zip(taken, parts):
            if part < 0:
                entries.append(_plus_entry(fs, parent, ino, name))
                continue
            fd, results[part] = results[part], -1  # adopt owns it now, even if it fails
            entry = _NO_ENTRY  # an error: gone since getdents
            if fd >= 0:
                with contextlib.suppress(OSError):
                    t0 = _clock()
                    inode, st = adopt(fd)
                    entry = fs.entry(inode, st, t0)
            entries.append(entry)
    finally:  # a bug above leaks no fd
        for fd in results:
            if fd >= 0:
                os.close(fd)
    return _plus_reply(taken, entries)


_NO_ENTRY = encode.negative_entry((0, 0))
