"""Reply encoding: typed values in, bytes out.  Pure; this is a hot path.

Attributes come from `os.stat_result`, the backing's own values; times are
split into (seconds, nanoseconds) from the `*_ns` fields so nothing is lost
to floats.
"""

from __future__ import annotations

import os
import struct

from fastpass.kernel import abi

_NS = 1_000_000_000
_U64 = (1 << 64) - 1  # times before 1970 travel as two's complement; the kernel reads them signed
_pack_entry = abi.ENTRY_OUT.pack
_pack_attr = abi.ATTR.pack
_pack_attr_head = abi.ATTR_OUT_HEAD.pack
_pack_entry_head = abi.ENTRY_OUT_HEAD.pack
_pack_open = abi.OPEN_OUT.pack
_pack_dirent = abi.DIRENT.pack
_PAD = b"\0" * abi.DIRENT_ALIGN


def attr_values(st: os.stat_result) -> tuple:
    """The 16 fuse_attr fields of a backing stat result."""
    a, an = divmod(st.st_atime_ns, _NS)
    m, mn = divmod(st.st_mtime_ns, _NS)
    c, cn = divmod(st.st_ctime_ns, _NS)
    rdev = st.st_rdev
    if rdev:
        rdev = abi.new_encode_dev(os.major(rdev), os.minor(rdev))
    return (
        st.st_ino, st.st_size, st.st_blocks, a & _U64, m & _U64, c & _U64, an, mn, cn,
        st.st_mode, st.st_nlink, st.st_uid, st.st_gid, rdev, st.st_blksize, 0,
    )  # fmt: skip


def attr(st: os.stat_result) -> bytes:
    """The packed fuse_attr of a backing stat result (what the attribute cache keeps)."""
    return _pack_attr(*attr_values(st))


def entry_out(nodeid: int, generation: int, entry_valid: tuple[int, int], attr_valid: tuple[int, int], attr: bytes) -> bytes:
    """fuse_entry_out around a packed fuse_attr."""
    return _pack_entry_head(nodeid, generation, entry_valid[0], attr_valid[0], entry_valid[1], attr_valid[1]) + attr


def negative_entry(entry_valid: tuple[int, int]) -> bytes:
    """nodeid 0 with a valid time: a cached negative entry."""
    return _pack_entry(0, 0, entry_valid[0], 0, entry_valid[1], 0, *((0,) * 16))


def attr_out(attr_valid: tuple[int, int], attr: bytes) -> bytes:
    """fuse_attr_out around a packed fuse_attr."""
    return _pack_attr_head(attr_valid[0], attr_valid[1], 0) + attr


def open_out(fh: int, open_flags: int, backing_id: int = 0) -> bytes:
    return _pack_open(fh, open_flags, backing_id)


def statfs_out(sv: os.statvfs_result) -> bytes:
    return abi.STATFS_OUT.pack(
        sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files, sv.f_ffree, sv.f_bsize, sv.f_namemax, sv.f_frsize, 0
    )


def dirent(ino: int, off: int, dtype: int, name: bytes) -> bytes:
    """One fuse_dirent record, padded to 8 bytes; `off` is the cookie of the next entry."""
    n = len(name)
    return _pack_dirent(ino, off, n, dtype) + name + _PAD[: -n % abi.DIRENT_ALIGN]


def dirent_size(name: bytes, plus: bool) -> int:
    base = abi.NAME_OFFSET_DIRENTPLUS if plus else abi.NAME_OFFSET
    return (base + len(name) + 7) & ~7


def notification(code: int, body: bytes) -> bytes:
    """A server-to-kernel message: an out-header with unique 0 and the notify code in `error`."""
    return abi.OUT_HEADER.pack(16 + len(body), code, 0) + body


def inval_inode(nodeid: int, data: bool) -> bytes:
    """Drop the kernel's attributes of `nodeid`, and its cached pages too if `data`."""
    return notification(abi.NotifyCode.INVAL_INODE, abi.NOTIFY_INVAL_INODE_OUT.pack(nodeid, 0 if data else -1, 0))


def inval_entry(parent: int, name: bytes) -> bytes:
    """Drop the kernel's dentry `name` in `parent`: its next use looks the name up again."""
    return notification(abi.NotifyCode.INVAL_ENTRY, abi.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0")


def delete(parent: int, child: int, name: bytes) -> bytes:
    """`name` in `parent`, which was `child`, is gone: the kernel drops the dentry and unlinks the inode."""
    return notification(abi.NotifyCode.DELETE, abi.NOTIFY_DELETE_OUT.pack(parent, child, len(name), 0) + name + b"\0")


def inc_epoch() -> bytes:
    """Make every dentry the kernel holds fail its next revalidation, so each name is looked up
    again (7.44)."""
    return notification(abi.NotifyCode.INC_EPOCH, b"")


def prune(nodeids: list[int]) -> bytes:
    """Ask the kernel to drop these inodes where nothing uses them (their dentries with them): it
    sends a FORGET for each it drops (7.45)."""
    n = len(nodeids)
    return notification(abi.NotifyCode.PRUNE, abi.NOTIFY_PRUNE_OUT.pack(n, 0, 0) + struct.pack(f"<{n}Q", *nodeids))
