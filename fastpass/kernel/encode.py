"""Reply encoding: typed values in, bytes out.  Pure; this is a hot path.

Attributes come from `os.stat_result`, the backing's own values; times are
split into (seconds, nanoseconds) from the `*_ns` fields so nothing is lost
to floats.
"""

from __future__ import annotations

import os

from fastpass.kernel import abi

_NS = 1_000_000_000
_U64 = (1 << 64) - 1  # times before 1970 travel as two's complement; the kernel reads them signed
_pack_entry = abi.ENTRY_OUT.pack
_pack_attr_out = abi.ATTR_OUT.pack
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


def entry_out(nodeid: int, generation: int, entry_valid: tuple[int, int], attr_valid: tuple[int, int], st: os.stat_result) -> bytes:
    """fuse_entry_out; nodeid 0 with a valid time is a cached negative entry."""
    return _pack_entry(nodeid, generation, entry_valid[0], attr_valid[0], entry_valid[1], attr_valid[1], *attr_values(st))


def negative_entry(entry_valid: tuple[int, int]) -> bytes:
    return _pack_entry(0, 0, entry_valid[0], 0, entry_valid[1], 0, *((0,) * 16))


def attr_out(attr_valid: tuple[int, int], st: os.stat_result) -> bytes:
    return _pack_attr_out(attr_valid[0], attr_valid[1], 0, *attr_values(st))


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
