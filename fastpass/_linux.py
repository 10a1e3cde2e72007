"""ctypes bindings for the Linux calls that the `os` module lacks.

Every wrapper raises OSError with the call's errno, like `os` does, so the
worker turns it into the caller's errno in one place.  Only x86_64 syscall
numbers are used where glibc 2.36 has no wrapper.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Callable, Iterator

_libc = ctypes.CDLL(None, use_errno=True)

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2
MAX_HANDLE_SZ = 128
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
STATX_BASIC_STATS = 0x7FF
_SYS_GETDENTS64 = 217
_SYS_STATX = 332
_SYS_RENAMEAT2 = 316
_SYS_SETGROUPS = 116


def _check(ret: int, *what: object) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *what)
    return ret


def _call(fn: Callable[..., int], *args: object) -> int:
    """Call into libc, retrying on EINTR as the os module does (PEP 475): a worker's periodic
    SIGALRM must never surface as the caller's errno."""
    while True:
        ret = fn(*args)
        if ret >= 0 or ctypes.get_errno() != errno.EINTR:
            return _check(ret)


def _fs(path: str | bytes) -> bytes:
    return os.fsencode(path)


# --- mounting --------------------------------------------------------------
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    _check(_libc.mount(_fs(source), _fs(target), _fs(fstype), flags, _fs(data)), target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_fs(target), flags), target)


# --- credentials -------------------------------------------------------------
def setfsuid(uid: int) -> int:
    """Set the thread's fsuid; returns the previous one (the call never fails visibly)."""
    return _libc.setfsuid(uid)


def fsuid_now() -> int:
    """The thread's fsuid: setfsuid to an id that is no uid changes nothing and returns it."""
    return _libc.setfsuid(-1) & 0xFFFFFFFF


def setfsgid(gid: int) -> int:
    return _libc.setfsgid(gid)


def setgroups(groups: list[int]) -> None:
    """Set this thread's supplementary groups only.  glibc's setgroups (and so os.setgroups) stops
    every thread of the process to change them all, which waits forever on a thread stuck in the
    kernel, e.g. the pyfuse3 engine's watcher blocked in a notification while the request it waits
    for is the one being served."""
    arr = (ctypes.c_uint * len(groups))(*groups)
    _call(_libc.syscall, _SYS_SETGROUPS, len(groups), arr)


@contextlib.contextmanager
def fsuid(uid: int) -> Iterator[None]:
    """Run a block with this fsuid (back to 0 restores the filesystem capabilities), then return."""
    previous = setfsuid(uid)
    try:
        yield
    finally:
        setfsuid(previous)


def set_pdeathsig(sig: int) -> None:
    _call(_libc.prctl, PR_SET_PDEATHSIG, sig, 0, 0, 0)


def munmap(address: int, length: int) -> None:
    _call(_libc.munmap, ctypes.c_void_p(address), ctypes.c_size_t(length))


def set_name(name: str) -> None:
    """The process's name in ps, top and /proc/PID/comm (15 bytes at most)."""
    _call(_libc.prctl, PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


# --- file handles ------------------------------------------------------------
class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_HANDLE_HEAD = 8


def name_to_handle(fd: int) -> tuple[bytes, int]:
    """File handle of the inode behind `fd` (an O_PATH fd is fine) and its mount id."""
    fh = _FileHandle()
    fh.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    _call(_libc.name_to_handle_at, fd, b"", ctypes.byref(fh), ctypes.byref(mount_id), AT_EMPTY_PATH)
    return ctypes.string_at(ctypes.addressof(fh), _HANDLE_HEAD + fh.handle_bytes), mount_id.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """Reopen an inode from its handle; needs CAP_DAC_READ_SEARCH.  ESTALE if it is gone."""
    buf = ctypes.create_string_buffer(handle, len(handle))
    return _call(_libc.open_by_handle_at, mount_fd, buf, flags)


# --- *at calls with AT_EMPTY_PATH ----------------------------------------------
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """chown the inode behind an O_PATH fd without following a symlink (-1 leaves a field)."""
    _call(_libc.fchownat, fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]


def utimens_empty(fd: int, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """utimensat on the inode behind an O_PATH fd; nsec may be UTIME_NOW or UTIME_OMIT."""
    ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _call(_libc.utimensat, fd, b"", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)


def renameat2(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> None:
    _call(_libc.syscall, _SYS_RENAMEAT2, olddir, ctypes.c_char_p(old), newdir, ctypes.c_char_p(new), ctypes.c_uint(flags))


_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _call(_libc.fallocate, fd, mode, offset, length)


def syncfs(fd: int) -> None:
    _call(_libc.syncfs, fd)


def statx(fd: int, flags: int, mask: int, buf: ctypes.Array) -> None:
    """statx(2) of the inode behind `fd` into `buf` (256 bytes, the fuse_statx layout)."""
    _call(_libc.syscall, _SYS_STATX, fd, ctypes.c_char_p(b""), flags | AT_EMPTY_PATH, ctypes.c_uint(mask), buf)


_STATFS = ctypes.create_string_buffer(120)  # struct statfs; f_type, a long, comes first


def fstatfs_type(fd: int) -> int:
    """The f_type (filesystem magic) of the filesystem holding the inode behind `fd` (O_PATH will do)."""
    _call(_libc.fstatfs, fd, _STATFS)
    return int.from_bytes(_STATFS.raw[:8], "little", signed=False)


def getdents64(fd: int, buf: ctypes.Array) -> int:
    """Fill `buf` with linux_dirent64 records from the directory fd's position; 0 at the end."""
    return _call(_libc.syscall, _SYS_GETDENTS64, fd, buf, len(buf))


# --- FUSE passthrough (Linux 6.9) ---------------------------------------------------
# fcntl.ioctl, not ctypes: 0.45 us a call against 1.34 (measured here, FIONREAD on a pipe), on
# every passthrough open that registers.  Neither ioctl sleeps, so EINTR cannot interrupt it.
_BACKING_MAP = struct.Struct("<iIQ")  # struct fuse_backing_map: fd, flags, padding


def backing_open(devfd: int, fd: int, request: int) -> int:
    """FUSE_DEV_IOC_BACKING_OPEN: register `fd` as a backing file; returns its backing id (> 0).

    The kernel keeps the calling thread's credentials with it for all I/O it passes through.
    """
    return fcntl.ioctl(devfd, request, bytearray(_BACKING_MAP.pack(fd, 0, 0)))


def backing_close(devfd: int, backing_id: int, request: int) -> None:
    fcntl.ioctl(devfd, request, bytearray(struct.pack("<I", backing_id)))


# --- fanotify (the watcher) ---------------------------------------------------------
FAN_CLOEXEC = 0x1
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_TARGET_FID = 0x1000
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_Q_OVERFLOW = 0x4000
FAN_ONDIR = 0x40000000
FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def fanotify_init(flags: int, event_f_flags: int) -> int:
    return _call(_libc.fanotify_init, flags, event_f_flags)


def fanotify_mark(fd: int, flags: int, mask: int, path: str) -> None:
    _call(_libc.fanotify_mark, fd, flags, mask, -100, _fs(path))  # AT_FDCWD
