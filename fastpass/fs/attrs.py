"""Attributes: getattr, setattr, statx, access.  Always the backing's own values."""

from __future__ import annotations

import errno
import os
import stat
import time

from fastpass import _linux
from fastpass.fs.context import Fs, Request, proc_path
from fastpass.kernel import abi
from fastpass.kernel.abi import Fattr

_fstat = os.fstat
_clock = time.monotonic_ns


def getattr_(fs: Fs, req: Request, getattr_flags: int, fh: int) -> bytes:
    nodeid = req.nodeid
    cached = fs.cached_attr(nodeid)
    if cached is not None:
        return cached
    t0 = _clock()
    if getattr_flags & abi.GETATTR_FH:
        try:
            return fs.attr(nodeid, _fstat(fs.file_fd(fh)), t0)
        except OSError:
            pass  # a directory fh or a stale one: the inode answers
    return fs.attr(nodeid, _fstat(fs.inode_fd(nodeid)), t0)


def kill_suidgid(fd: int) -> None:
    """What the kernel asks for under HANDLE_KILLPRIV_V2 when a caller without CAP_FSETID
    writes, truncates or chowns: drop set-user-ID, set-group-ID where group execute is set
    (without it, that bit means mandatory locking and stays) and file capabilities, as the
    VFS would."""
    path = proc_path(fd)
    mode = os.fstat(fd).st_mode
    kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
    if mode & kill:
        os.chmod(path, stat.S_IMODE(mode) & ~kill)
    try:  # file capabilities go too, as the VFS's killpriv drops them (looked for first: anyone may look)
        os.getxattr(path, "security.capability")
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise
        return
    os.removexattr(path, "security.capability")


def _time(valid: int, set_flag: int, now_flag: int, sec: int, nsec: int) -> tuple[int, int]:
    if valid & now_flag:
        return 0, _linux.UTIME_NOW
    if valid & set_flag:
        return sec, nsec
    return 0, _linux.UTIME_OMIT


def setattr_(fs: Fs, req: Request, valid: int, fh: int, size: int, lock_owner: int, atime: int, mtime: int,
             ctime: int, atimensec: int, mtimensec: int, ctimensec: int, mode: int, uid: int, gid: int) -> bytes:  # fmt: skip
    """In the order chmod, chown, truncate, utimes, as the kernel's own setattr does."""
    ifd = fs.inode_fd(req.nodeid)
    fd = -1
    if valid & Fattr.FH:
        try:
            fd = fs.file_fd(fh)
        except OSError:
            fd = -1
    if valid & Fattr.MODE:
        if fd >= 0:
            os.fchmod(fd, mode & 0o7777)
        else:
            os.chmod(proc_path(ifd), mode & 0o7777)
    if valid & (Fattr.UID | Fattr.GID):
        _linux.fchown_empty(ifd, uid if valid & Fattr.UID else -1, gid if valid & Fattr.GID else -1)
    if valid & Fattr.SIZE:
        if fd >= 0:
            os.ftruncate(fd, size)
        else:
            os.truncate(proc_path(ifd), size)
    if valid & (Fattr.ATIME | Fattr.MTIME | Fattr.ATIME_NOW | Fattr.MTIME_NOW):
        times = (_time(valid, Fattr.ATIME, Fattr.ATIME_NOW, atime, atimensec),
                 _time(valid, Fattr.MTIME, Fattr.MTIME_NOW, mtime, mtimensec))  # fmt: skip
        try:
            _linux.utimens_empty(ifd, *times)
        except PermissionError:
            # FATTR_CTIME comes with the writeback cache only: the kernel keeps mtime and ctime
            # itself and sends them when it writes a file back or truncates it, as whoever
            # closed, synced or truncated, often a writer that does not own the file.  It has
            # checked this caller's right to these times itself (default_permissions, which
            # --writeback-cache with --allow-other requires), so they are set as the server.
            if not valid & Fattr.CTIME:
                raise
            with _linux.fsuid(fs.credentials.uid):
                _linux.utimens_empty(ifd, *times)
    if valid & Fattr.KILL_SUIDGID:
        kill_suidgid(fd if fd >= 0 else ifd)
    # FATTR_CTIME: the backing sets ctime itself on every change above.
    t0 = _clock()
    return fs.attr(req.nodeid, _fstat(fd if fd >= 0 else ifd), t0)


def statx(fs: Fs, req: Request, getattr_flags: int, fh: int, sx_flags: int, sx_mask: int) -> bytes:
    """fuse_statx is bit-compatible with struct statx: the backing's buffer goes out as is."""
    fd = -1
    if getattr_flags & abi.GETATTR_FH:
        try:
            fd = fs.file_fd(fh)
        except OSError:
            fd = -1
    buf = fs.stx_buf
    _linux.statx(fd if fd >= 0 else fs.inode_fd(req.nodeid), sx_flags | _linux.AT_SYMLINK_NOFOLLOW,
                 sx_mask | _linux.STATX_BASIC_STATS, buf)  # fmt: skip
    sec, nsec = fs.attr_valid_for(os.makedev(*abi.STATX_DEV.unpack_from(buf)))
    return abi.STATX_OUT_HEAD.pack(sec, nsec, 0) + buf.raw


def access(fs: Fs, req: Request, mask: int) -> None:
    # effective_ids=True is AT_EACCESS: check as the fsuid/fsgid the caller runs with.
    if not os.access(proc_path(fs.inode_fd(req.nodeid)), mask, effective_ids=True):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
