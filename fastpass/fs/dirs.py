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

import os
import struct
import time

from fastpass import _linux
from fastpass.fs.context import Fs, Request, proc_path
from fastpass.fs.handles import DirHandle
from fastpass.kernel import encode

_DIRENT64 = struct.Struct("<QqHB")  # d_ino, d_off, d_reclen, d_type; d_name follows
_NAME_AT = _DIRENT64.size
_DOTS = (b".", b"..")
_clock = time.monotonic_ns


def opendir(fs: Fs, req: Request, flags: int, open_flags: int) -> bytes:
    fd = os.open(proc_path(fs.inode_fd(req.nodeid)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return encode.open_out(fs.handles.add(DirHandle(fd), req.nodeid, os.O_RDONLY | os.O_DIRECTORY), 0)


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
    final READDIR of a listing has.
    """
    if offset != h.pos:
        fd = fs.open_dir(nodeid)
        os.close(h.fd)
        h.fd = fd
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
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


def readdirplus(fs: Fs, req: Request, fh: int, offset: int, size: int, read_flags: int, lock_owner: int,
                flags: int) -> bytes:  # fmt: skip
    h = fs.dir_handle(fh)
    if fs.cache is not None:
        fs.cache.read(req.nodeid)
    inodes = fs.inodes
    parent = inodes.get(req.nodeid)
    out = []
    used = 0
    dirent = encode.dirent
    for ino, off, dtype, name in _entries(fs, req.nodeid, h, offset):
        need = encode.dirent_size(name, True)
        if used + need > size:
            break
        entry = _NO_ENTRY
        if name not in _DOTS:
            try:
                t0 = _clock()
                inode, st = inodes.lookup(parent, name)
                entry = fs.entry(inode, st, t0)
            except OSError:
                pass  # gone since getdents: the name without attributes
        out.append(entry)
        out.append(dirent(ino, off, dtype, name))
        used += need
        h.pending.popleft()
        h.pos = off
    return b"".join(out)


_NO_ENTRY = encode.negative_entry((0, 0))
