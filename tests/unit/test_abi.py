"""fastpass.kernel.abi against the kernel's own ABI (include/uapi/linux/fuse.h, 7.45).

Offsets are checked by packing a distinctive value into every field (each
byte of field i is i+1) and reading the bytes back at the kernel's offset;
pad bytes must come out zero.  Layouts are x86_64 (LP64, little-endian).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpass.kernel import abi
from fastpass.kernel.abi import Fattr, FopenFlag, InitFlag, NotifyCode, Opcode

U, S = "u", "s"  # unsigned / signed field

# struct -> (kernel size, [(field, offset, size, signedness), ...] in pack order, pad fields left out)
LAYOUTS: dict[str, tuple[int, list[tuple[str, int, int, str]]]] = {
    "IN_HEADER": (40, [("len", 0, 4, U), ("opcode", 4, 4, U), ("unique", 8, 8, U), ("nodeid", 16, 8, U),
                       ("uid", 24, 4, U), ("gid", 28, 4, U), ("pid", 32, 4, U), ("total_extlen", 36, 2, U),
                       ("padding", 38, 2, U)]),
    "OUT_HEADER": (16, [("len", 0, 4, U), ("error", 4, 4, S), ("unique", 8, 8, U)]),
    "ATTR": (88, [("ino", 0, 8, U), ("size", 8, 8, U), ("blocks", 16, 8, U), ("atime", 24, 8, U),
                  ("mtime", 32, 8, U), ("ctime", 40, 8, U), ("atimensec", 48, 4, U), ("mtimensec", 52, 4, U),
                  ("ctimensec", 56, 4, U), ("mode", 60, 4, U), ("nlink", 64, 4, U), ("uid", 68, 4, U),
                  ("gid", 72, 4, U), ("rdev", 76, 4, U), ("blksize", 80, 4, U), ("flags", 84, 4, U)]),
    "ENTRY_OUT_HEAD": (40, [("nodeid", 0, 8, U), ("generation", 8, 8, U), ("entry_valid", 16, 8, U),
                            ("attr_valid", 24, 8, U), ("entry_valid_nsec", 32, 4, U),
                            ("attr_valid_nsec", 36, 4, U)]),
    "ATTR_OUT_HEAD": (16, [("attr_valid", 0, 8, U), ("attr_valid_nsec", 8, 4, U), ("dummy", 12, 4, U)]),
    "GETATTR_IN": (16, [("getattr_flags", 0, 4, U), ("fh", 8, 8, U)]),
    "INIT_IN": (64, [("major", 0, 4, U), ("minor", 4, 4, U), ("max_readahead", 8, 4, U), ("flags", 12, 4, U),
                     ("flags2", 16, 4, U)]),
    "INIT_OUT": (64, [("major", 0, 4, U), ("minor", 4, 4, U), ("max_readahead", 8, 4, U), ("flags", 12, 4, U),
                      ("max_background", 16, 2, U), ("congestion_threshold", 18, 2, U), ("max_write", 20, 4, U),
                      ("time_gran", 24, 4, U), ("max_pages", 28, 2, U), ("map_alignment", 30, 2, U),
                      ("flags2", 32, 4, U), ("max_stack_depth", 36, 4, U), ("request_timeout", 40, 2, U)]),
    "OPEN_IN": (8, [("flags", 0, 4, U), ("open_flags", 4, 4, U)]),
    "OPEN_OUT": (16, [("fh", 0, 8, U), ("open_flags", 8, 4, U), ("backing_id", 12, 4, S)]),
    "CREATE_IN": (16, [("flags", 0, 4, U), ("mode", 4, 4, U), ("umask", 8, 4, U), ("open_flags", 12, 4, U)]),
    "MKNOD_IN": (16, [("mode", 0, 4, U), ("rdev", 4, 4, U), ("umask", 8, 4, U)]),
    "MKDIR_IN": (8, [("mode", 0, 4, U), ("umask", 4, 4, U)]),
    "RENAME_IN": (8, [("newdir", 0, 8, U)]),
    "RENAME2_IN": (16, [("newdir", 0, 8, U), ("flags", 8, 4, U)]),
    "LINK_IN": (8, [("oldnodeid", 0, 8, U)]),
    "FORGET_IN": (8, [("nlookup", 0, 8, U)]),
    "BATCH_FORGET_IN": (8, [("count", 0, 4, U)]),
    "FORGET_ONE": (16, [("nodeid", 0, 8, U), ("nlookup", 8, 8, U)]),
    "SETATTR_IN": (88, [("valid", 0, 4, U), ("fh", 8, 8, U), ("size", 16, 8, U), ("lock_owner", 24, 8, U),
                        ("atime", 32, 8, U), ("mtime", 40, 8, U), ("ctime", 48, 8, U), ("atimensec", 56, 4, U),
                        ("mtimensec", 60, 4, U), ("ctimensec", 64, 4, U), ("mode", 68, 4, U), ("uid", 76, 4, U),
                        ("gid", 80, 4, U)]),
    "READ_IN": (40, [("fh", 0, 8, U), ("offset", 8, 8, U), ("size", 16, 4, U), ("read_flags", 20, 4, U),
                     ("lock_owner", 24, 8, U), ("flags", 32, 4, U)]),
    "WRITE_IN": (40, [("fh", 0, 8, U), ("offset", 8, 8, U), ("size", 16, 4, U), ("write_flags", 20, 4, U),
                      ("lock_owner", 24, 8, U), ("flags", 32, 4, U)]),
    "WRITE_OUT": (8, [("size", 0, 4, U)]),
    "RELEASE_IN": (24, [("fh", 0, 8, U), ("flags", 8, 4, U), ("release_flags", 12, 4, U),
                        ("lock_owner", 16, 8, U)]),
    "FLUSH_IN": (24, [("fh", 0, 8, U), ("lock_owner", 16, 8, U)]),
    "FSYNC_IN": (16, [("fh", 0, 8, U), ("fsync_flags", 8, 4, U)]),
    "LSEEK_IN": (24, [("fh", 0, 8, U), ("offset", 8, 8, U), ("whence", 16, 4, U)]),
    "LSEEK_OUT": (8, [("offset", 0, 8, U)]),
    "FALLOCATE_IN": (32, [("fh", 0, 8, U), ("offset", 8, 8, U), ("length", 16, 8, U), ("mode", 24, 4, U)]),
    "COPY_FILE_RANGE_IN": (56, [("fh_in", 0, 8, U), ("off_in", 8, 8, U), ("nodeid_out", 16, 8, U),
                                ("fh_out", 24, 8, U), ("off_out", 32, 8, U), ("len", 40, 8, U),
                                ("flags", 48, 8, U)]),
    "COPY_FILE_RANGE_OUT": (8, [("bytes_copied", 0, 8, U)]),
    "STATFS_OUT": (80, [("blocks", 0, 8, U), ("bfree", 8, 8, U), ("bavail", 16, 8, U), ("files", 24, 8, U),
                        ("ffree", 32, 8, U), ("bsize", 40, 4, U), ("namelen", 44, 4, U), ("frsize", 48, 4, U),
                        ("padding", 52, 4, U)]),
    "ACCESS_IN": (8, [("mask", 0, 4, U)]),
    "GETXATTR_IN": (8, [("size", 0, 4, U)]),
    "GETXATTR_OUT": (8, [("size", 0, 4, U)]),
    "SETXATTR_IN_COMPAT": (8, [("size", 0, 4, U), ("flags", 4, 4, U)]),
    "SETXATTR_IN_EXT": (16, [("size", 0, 4, U), ("flags", 4, 4, U), ("setxattr_flags", 8, 4, U)]),
    "INTERRUPT_IN": (8, [("unique", 0, 8, U)]),
    "SYNCFS_IN": (8, []),
    "STATX_IN": (24, [("getattr_flags", 0, 4, U), ("fh", 8, 8, U), ("sx_flags", 16, 4, U),
                      ("sx_mask", 20, 4, U)]),
    "STATX_OUT_HEAD": (32, [("attr_valid", 0, 8, U), ("attr_valid_nsec", 8, 4, U), ("flags", 12, 4, U)]),
    "DIRENT": (24, [("ino", 0, 8, U), ("off", 8, 8, U), ("namelen", 16, 4, U), ("type", 20, 4, U)]),
    "NOTIFY_INVAL_INODE_OUT": (24, [("ino", 0, 8, U), ("off", 8, 8, S), ("len", 16, 8, S)]),
    "NOTIFY_INVAL_ENTRY_OUT": (16, [("parent", 0, 8, U), ("namelen", 8, 4, U), ("flags", 12, 4, U)]),
    "NOTIFY_DELETE_OUT": (24, [("parent", 0, 8, U), ("child", 8, 8, U), ("namelen", 16, 4, U),
                               ("padding", 20, 4, U)]),
    "BACKING_MAP": (16, [("fd", 0, 4, S), ("flags", 4, 4, U), ("padding", 8, 8, U)]),
}


def _nest(prefix: list, base: int, inner: list) -> list:
    return prefix + [(f"attr.{name}", base + off, size, sign) for name, off, size, sign in inner]


# The two replies built as one struct each: the head, then fuse_attr at 40 / 16.
LAYOUTS["ENTRY_OUT"] = (128, _nest(LAYOUTS["ENTRY_OUT_HEAD"][1], 40, LAYOUTS["ATTR"][1]))
LAYOUTS["ATTR_OUT"] = (104, _nest(LAYOUTS["ATTR_OUT_HEAD"][1], 16, LAYOUTS["ATTR"][1]))


def _marker(i: int, size: int) -> int:
    """A value whose every byte is i+1: its position in the packed bytes shows where the field lives."""
    return int.from_bytes(bytes([i + 1]) * size, "little")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_struct_size(name: str) -> None:
    assert getattr(abi, name).size == LAYOUTS[name][0]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_struct_offsets(name: str) -> None:
    s: struct.Struct = getattr(abi, name)
    size, fields = LAYOUTS[name]
    assert s.size == size, "size differs from the kernel's"
    assert len(s.unpack(bytes(s.size))) == len(fields), "field count differs from the kernel's (pads excluded)"
    raw = s.pack(*(_marker(i, f[2]) for i, f in enumerate(fields)))
    covered = set()
    for i, (field, off, fsize, _sign) in enumerate(fields):
        assert raw[off : off + fsize] == bytes([i + 1]) * fsize, f"{name}.{field} is not at offset {off}"
        covered.update(range(off, off + fsize))
    pads = [b for pos, b in enumerate(raw) if pos not in covered]
    assert not any(pads), f"{name}: padding bytes are not zero"
    assert s.unpack(raw) == tuple(_marker(i, f[2]) for i, f in enumerate(fields))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_struct_signedness(name: str) -> None:
    """Signed kernel fields take -1; unsigned ones refuse it (so no value wraps silently)."""
    s: struct.Struct = getattr(abi, name)
    _, fields = LAYOUTS[name]
    for i, (field, _off, _size, sign) in enumerate(fields):
        values = [0] * len(fields)
        values[i] = -1
        if sign == S:
            raw = s.pack(*values)
            assert s.unpack(raw)[i] == -1, f"{name}.{field}"
        else:
            with pytest.raises(struct.error):
                s.pack(*values)


def test_little_endian_everywhere() -> None:
    for name in LAYOUTS:
        assert getattr(abi, name).format[0] == "<", name


def test_derived_sizes() -> None:
    assert abi.ENTRY_OUT_SIZE == 128
    assert abi.ATTR_OUT_SIZE == 104
    assert abi.NAME_OFFSET == 24  # FUSE_NAME_OFFSET
    assert abi.NAME_OFFSET_DIRENTPLUS == 152  # FUSE_NAME_OFFSET_DIRENTPLUS
    assert abi.DIRENT_ALIGN == 8
    assert abi.STATX_SIZE == 256
    assert abi.STATX_OUT_HEAD.size + abi.STATX_SIZE == 288  # fuse_statx_out
    assert abi.WRITE_IN is abi.READ_IN or abi.WRITE_IN.format == abi.READ_IN.format


def test_constants() -> None:
    assert abi.KERNEL_VERSION == 7
    assert abi.KERNEL_MINOR_VERSION == 45
    assert abi.ROOT_ID == 1
    assert abi.MIN_READ_BUFFER == 8192
    assert abi.UNIQUE_RESEND == 1 << 63
    assert abi.INT_REQ_BIT == 1
    assert abi.GETATTR_FH == 1
    assert abi.FSYNC_FDATASYNC == 1
    assert abi.WRITE_CACHE == 1


# --- ioctls -----------------------------------------------------------------

def _ioc(direction: int, nr: int, size: int) -> int:
    """Linux asm-generic _IOC with magic 229 (0xE5): dir<<30 | size<<16 | type<<8 | nr."""
    return (direction << 30) | (size << 16) | (229 << 8) | nr


_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def test_ioctl_numbers_golden() -> None:
    assert abi.DEV_IOC_CLONE == 0x8004E500
    assert abi.DEV_IOC_BACKING_OPEN == 0x4010E501
    assert abi.DEV_IOC_BACKING_CLOSE == 0x4004E502
    assert abi.DEV_IOC_SYNC_INIT == 0x0000E503


def test_ioctl_numbers_from_ioc_macros() -> None:
    assert abi.DEV_IOC_CLONE == _ioc(_IOC_READ, 0, 4)  # _IOR(229, 0, uint32_t)
    assert abi.DEV_IOC_BACKING_OPEN == _ioc(_IOC_WRITE, 1, abi.BACKING_MAP.size)  # _IOW(229, 1, fuse_backing_map)
    assert abi.DEV_IOC_BACKING_CLOSE == _ioc(_IOC_WRITE, 2, 4)  # _IOW(229, 2, uint32_t)
    assert abi.DEV_IOC_SYNC_INIT == _ioc(_IOC_NONE, 3, 0)  # _IO(229, 3)


# --- opcodes and flag values ------------------------------------------------------

KERNEL_OPCODES = {
    "LOOKUP": 1, "FORGET": 2, "GETATTR": 3, "SETATTR": 4, "READLINK": 5, "SYMLINK": 6, "MKNOD": 8, "MKDIR": 9,
    "UNLINK": 10, "RMDIR": 11, "RENAME": 12, "LINK": 13, "OPEN": 14, "READ": 15, "WRITE": 16, "STATFS": 17,
    "RELEASE": 18, "FSYNC": 20, "SETXATTR": 21, "GETXATTR": 22, "LISTXATTR": 23, "REMOVEXATTR": 24, "FLUSH": 25,
    "INIT": 26, "OPENDIR": 27, "READDIR": 28, "RELEASEDIR": 29, "FSYNCDIR": 30, "GETLK": 31, "SETLK": 32,
    "SETLKW": 33, "ACCESS": 34, "CREATE": 35, "INTERRUPT": 36, "BMAP": 37, "DESTROY": 38, "IOCTL": 39,
    "POLL": 40, "NOTIFY_REPLY": 41, "BATCH_FORGET": 42, "FALLOCATE": 43, "READDIRPLUS": 44, "RENAME2": 45,
    "LSEEK": 46, "COPY_FILE_RANGE": 47, "SETUPMAPPING": 48, "REMOVEMAPPING": 49, "SYNCFS": 50, "TMPFILE": 51,
    "STATX": 52, "COPY_FILE_RANGE_64": 53,
}  # fmt: skip


def test_opcodes_match_kernel_enum() -> None:
    assert {op.name: op.value for op in Opcode} == KERNEL_OPCODES
    assert 7 not in {op.value for op in Opcode} and 19 not in {op.value for op in Opcode}


INIT_BITS = [
    "ASYNC_READ", "POSIX_LOCKS", "FILE_OPS", "ATOMIC_O_TRUNC", "EXPORT_SUPPORT", "BIG_WRITES", "DONT_MASK",
    "SPLICE_WRITE", "SPLICE_MOVE", "SPLICE_READ", "FLOCK_LOCKS", "HAS_IOCTL_DIR", "AUTO_INVAL_DATA",
    "DO_READDIRPLUS", "READDIRPLUS_AUTO", "ASYNC_DIO", "WRITEBACK_CACHE", "NO_OPEN_SUPPORT", "PARALLEL_DIROPS",
    "HANDLE_KILLPRIV", "POSIX_ACL", "ABORT_ERROR", "MAX_PAGES", "CACHE_SYMLINKS", "NO_OPENDIR_SUPPORT",
    "EXPLICIT_INVAL_DATA", "MAP_ALIGNMENT", "SUBMOUNTS", "HANDLE_KILLPRIV_V2", "SETXATTR_EXT", "INIT_EXT",
    "INIT_RESERVED", "SECURITY_CTX", "HAS_INODE_DAX", "CREATE_SUPP_GROUP", "HAS_EXPIRE_ONLY",
    "DIRECT_IO_ALLOW_MMAP", "PASSTHROUGH", "NO_EXPORT_SUPPORT", "HAS_RESEND", "ALLOW_IDMAP", "OVER_IO_URING",
    "REQUEST_TIMEOUT",
]  # fmt: skip  (index = bit number, as in fuse.h)


def test_init_flag_bits() -> None:
    assert {f.name: f.value for f in InitFlag} == {name: 1 << bit for bit, name in enumerate(INIT_BITS)}


def test_init_flag_golden_values() -> None:
    assert InitFlag.PASSTHROUGH == 1 << 37 == 0x20_0000_0000
    assert InitFlag.PASSTHROUGH >> 32 == 0x20  # flags2 bit
    assert InitFlag.OVER_IO_URING == 1 << 41 and InitFlag.OVER_IO_URING >> 32 == 0x200
    assert InitFlag.REQUEST_TIMEOUT == 1 << 42 and InitFlag.REQUEST_TIMEOUT >> 32 == 0x400
    assert InitFlag.ALLOW_IDMAP == 1 << 40 and InitFlag.ALLOW_IDMAP >> 32 == 0x100
    assert InitFlag.DIRECT_IO_ALLOW_MMAP >> 32 == 0x10
    assert InitFlag.NO_EXPORT_SUPPORT >> 32 == 0x40
    assert InitFlag.HAS_RESEND >> 32 == 0x80
    assert InitFlag.INIT_EXT == 1 << 30
    assert InitFlag.SETXATTR_EXT == 1 << 29
    assert InitFlag.MAX_PAGES == 1 << 22
    assert InitFlag.WRITEBACK_CACHE == 1 << 16


def test_fopen_flags() -> None:
    assert {f.name: f.value for f in FopenFlag} == {
        "DIRECT_IO": 1, "KEEP_CACHE": 2, "NONSEEKABLE": 4, "CACHE_DIR": 8, "STREAM": 16, "NOFLUSH": 32,
        "PARALLEL_DIRECT_WRITES": 64, "PASSTHROUGH": 128,
    }  # fmt: skip


def test_fattr_flags() -> None:
    names = ["MODE", "UID", "GID", "SIZE", "ATIME", "MTIME", "FH", "ATIME_NOW", "MTIME_NOW", "LOCKOWNER",
             "CTIME", "KILL_SUIDGID"]  # fmt: skip
    assert {f.name: f.value for f in Fattr} == {name: 1 << bit for bit, name in enumerate(names)}


def test_notify_codes() -> None:
    assert {c.name: c.value for c in NotifyCode} == {
        "POLL": 1, "INVAL_INODE": 2, "INVAL_ENTRY": 3, "STORE": 4, "RETRIEVE": 5, "DELETE": 6, "RESEND": 7,
        "INC_EPOCH": 8, "PRUNE": 9,
    }  # fmt: skip


# --- device numbers --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("major", "minor", "encoded"),
    [
        (8, 1, 0x801),  # sda1
        (0, 0, 0),
        (1, 3, 0x103),  # /dev/null
        (259, 300, 0x11032C),  # nvme partition: minor > 255 spills into bits 20+
        (4095, 0xFF, 0xFFFFF),  # largest major, minor in the low byte only
        (0, 0xFFFFF, 0xFFF000FF),  # largest 20-bit minor
        (0xFFF, 0xFFFFF, 0xFFFFFFFF),
    ],
)
def test_new_encode_dev_golden(major: int, minor: int, encoded: int) -> None:
    assert abi.new_encode_dev(major, minor) == encoded
    assert abi.new_decode_dev(encoded) == (major, minor)


@given(st.integers(0, 0xFFF), st.integers(0, 0xFFFFF))
def test_new_dev_round_trip(major: int, minor: int) -> None:
    rdev = abi.new_encode_dev(major, minor)
    assert 0 <= rdev <= 0xFFFFFFFF
    assert abi.new_decode_dev(rdev) == (major, minor)
    # glibc's 64-bit dev_t agrees with the kernel's 32-bit form in this range
    assert rdev == os.makedev(major, minor)
