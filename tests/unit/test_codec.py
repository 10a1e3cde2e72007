"""Request decoding (kernel/opcodes), reply encoding (kernel/encode), INIT negotiation (kernel/init), debug forms.

Request bodies are built by hand, with struct formats written out here
from the kernel header (not taken from abi), so a wrong layout in abi shows
up as a wrong tuple.  Each row of a table says what it is.
"""

from __future__ import annotations

import os
import stat
import struct
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpass.kernel import abi, debug, encode, init
from fastpass.kernel.abi import Fattr, InitFlag, Opcode
from fastpass.kernel.opcodes import SPECS, Malformed, decoder


def dec(op: int, body: bytes | bytearray) -> tuple:
    return decoder(SPECS[op])(memoryview(body))


def p(fmt: str, *values: int) -> bytes:
    return struct.pack("<" + fmt, *values)


def _plain(values: tuple) -> tuple:
    """memoryviews compared by content."""
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in values)


# --- decode: golden rows ---------------------------------------------------------------

GOLDEN = [
    # LOOKUP: just the name, NUL-terminated
    ("lookup", Opcode.LOOKUP, bytes.fromhex("666f6f00"), (b"foo",)),
    # LOOKUP: bytes after the NUL (extensions) are ignored
    ("lookup-trailing", Opcode.LOOKUP, b"x\0\xff\xff", (b"x",)),
    # LOOKUP: a non-UTF-8 name stays bytes
    ("lookup-latin1", Opcode.LOOKUP, b"caf\xe9\0", (b"caf\xe9",)),
    # UNLINK / RMDIR / REMOVEXATTR: one name
    ("unlink", Opcode.UNLINK, b"gone\0", (b"gone",)),
    ("rmdir", Opcode.RMDIR, b"d\0", (b"d",)),
    ("removexattr", Opcode.REMOVEXATTR, b"user.k\0", (b"user.k",)),
    # MKNOD: mode (S_IFCHR|0644), rdev 8:1 in new_encode_dev form, umask 022, padding; then the name
    ("mknod", Opcode.MKNOD, p("IIII", 0o20644, 0x801, 0o022, 0) + b"dev\0", (0o20644, 0x801, 0o022, b"dev")),
    # MKNOD: the same as a literal dump (mode 0x21a4, rdev 0x801, umask 0x12)
    ("mknod-hex", Opcode.MKNOD, bytes.fromhex("a4210000 01080000 12000000 00000000 64657600"),
     (0o20644, 0x801, 0o022, b"dev")),
    # MKDIR: mode 0755, umask 077, name
    ("mkdir", Opcode.MKDIR, p("II", 0o755, 0o077) + b"sub\0", (0o755, 0o077, b"sub")),
    # RENAME: newdir, then old name and new name
    ("rename", Opcode.RENAME, p("Q", 5) + b"old\0new\0", (5, b"old", b"new")),
    # RENAME: as a literal dump, newdir 0x0102030405060708
    ("rename-hex", Opcode.RENAME, bytes.fromhex("0807060504030201 610062 00"), (0x0102030405060708, b"a", b"b")),
    # RENAME2: newdir, flags RENAME_EXCHANGE, padding, two names
    ("rename2", Opcode.RENAME2, p("QII", 7, 2, 0) + b"a\0b\0", (7, 2, b"a", b"b")),
    # RENAME2: garbage in the padding word is ignored
    ("rename2-pad", Opcode.RENAME2, p("QII", 7, 1, 0xFFFFFFFF) + b"x\0y\0", (7, 1, b"x", b"y")),
    # SYMLINK: link name first, then the target
    ("symlink", Opcode.SYMLINK, b"link\0/target/path\0", (b"link", b"/target/path")),
    # LINK: oldnodeid, then the new name
    ("link", Opcode.LINK, p("Q", 99) + b"hard\0", (99, b"hard")),
    # CREATE: flags O_WRONLY|O_CREAT, mode 0644, umask 022, open_flags KILL_SUIDGID; name
    ("create", Opcode.CREATE, p("IIII", 0o101, 0o100644, 0o022, 1) + b"new\0",
     (0o101, 0o100644, 0o022, 1, b"new")),
    # TMPFILE: create_in plus a name libfuse ignores
    ("tmpfile", Opcode.TMPFILE, p("IIII", 2, 0o100600, 0, 0) + b"\0", (2, 0o100600, 0, 0, b"")),
    # WRITE: fh 3, offset 4096, size 5, write_flags CACHE, lock_owner, flags O_RDWR, padding; then 5 bytes data
    ("write", Opcode.WRITE, p("QQIIQII", 3, 4096, 5, 1, 0xDEAD, 2, 0) + b"hello",
     (3, 4096, 5, 1, 0xDEAD, 2, b"hello")),
    # WRITE: data longer than size is cut to size
    ("write-long", Opcode.WRITE, p("QQIIQII", 1, 0, 2, 0, 0, 0, 0) + b"abcd", (1, 0, 2, 0, 0, 0, b"ab")),
    # WRITE: zero-length write
    ("write-empty", Opcode.WRITE, p("QQIIQII", 1, 0, 0, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0, b"")),
    # READ: fh 9, offset 1 TiB, size 128 KiB, read_flags LOCKOWNER, lock_owner 77, flags O_RDWR|O_LARGEFILE
    ("read", Opcode.READ, p("QQIIQII", 9, 1 << 40, 131072, 2, 77, 0o100002, 0),
     (9, 1 << 40, 131072, 2, 77, 0o100002)),
    # READDIR / READDIRPLUS: fuse_read_in as well
    ("readdir", Opcode.READDIR, p("QQIIQII", 4, 12345, 4096, 0, 0, 0, 0), (4, 12345, 4096, 0, 0, 0)),
    ("readdirplus", Opcode.READDIRPLUS, p("QQIIQII", 4, 0, 8192, 0, 0, 0, 0), (4, 0, 8192, 0, 0, 0)),
    # SETXATTR compat (8-byte setxattr_in): size 5, flags XATTR_CREATE; name; value with a NUL inside
    ("setxattr-compat", Opcode.SETXATTR, p("II", 5, 1) + b"user.x\0" + b"va\0ue", (5, 1, b"user.x", b"va\0ue")),
    # SETXATTR compat: empty value
    ("setxattr-empty", Opcode.SETXATTR, p("II", 0, 0) + b"user.e\0", (0, 0, b"user.e", b"")),
    # GETXATTR: size 0 (probe), name
    ("getxattr", Opcode.GETXATTR, p("II", 0, 0) + b"user.x\0", (0, b"user.x")),
    # LISTXATTR: size only
    ("listxattr", Opcode.LISTXATTR, p("II", 4096, 0), (4096,)),
    # BATCH_FORGET: count 2, dummy; then (nodeid, nlookup) pairs
    ("batch_forget", Opcode.BATCH_FORGET, p("II", 2, 0) + p("QQ", 10, 1) + p("QQ", 11, 3),
     ([(10, 1), (11, 3)],)),
    # BATCH_FORGET: count 0
    ("batch_forget-0", Opcode.BATCH_FORGET, p("II", 0, 0), ([],)),
    # FORGET: nlookup
    ("forget", Opcode.FORGET, p("Q", 3), (3,)),
    # GETATTR: flags GETATTR_FH, dummy, fh
    ("getattr", Opcode.GETATTR, p("IIQ", 1, 0, 42), (1, 42)),
    # SETATTR: valid MODE|SIZE|ATIME|MTIME|FH, padding, fh, size, lock_owner, a/m/ctime, a/m/ctimensec,
    # mode, unused4, uid, gid, unused5
    ("setattr", Opcode.SETATTR,
     p("IIQQQQQQIIIIIIII", 0x79, 0, 6, 1 << 33, 8, 1_600_000_000, 1_700_000_000, 1_650_000_000,
       123, 456_789, 999_999_999, 0o100640, 0xAAAA, 1000, 100, 0xBBBB),
     (0x79, 6, 1 << 33, 8, 1_600_000_000, 1_700_000_000, 1_650_000_000, 123, 456_789, 999_999_999, 0o100640,
      1000, 100)),
    # OPEN / OPENDIR: flags, open_flags
    ("open", Opcode.OPEN, p("II", 0o1000002, 0), (0o1000002, 0)),
    ("opendir", Opcode.OPENDIR, p("II", 0o200000, 0), (0o200000, 0)),
    # RELEASE: fh, flags, release_flags FLUSH, lock_owner
    ("release", Opcode.RELEASE, p("QIIQ", 5, 2, 1, 9), (5, 2, 1, 9)),
    # FLUSH: fh, unused, padding, lock_owner
    ("flush", Opcode.FLUSH, p("QIIQ", 5, 7, 7, 9), (5, 9)),
    # FSYNC: fh, fsync_flags FDATASYNC, padding
    ("fsync", Opcode.FSYNC, p("QII", 5, 1, 0), (5, 1)),
    # ACCESS: mask R_OK|X_OK
    ("access", Opcode.ACCESS, p("II", 5, 0), (5,)),
    # INTERRUPT: the unique of the request to interrupt
    ("interrupt", Opcode.INTERRUPT, p("Q", 1234), (1234,)),
    # INIT: major, minor, max_readahead, flags, flags2, 44 unused bytes
    ("init", Opcode.INIT, p("IIIII", 7, 45, 131072, 0x4000_0000, 0x20) + bytes(44),
     (7, 45, 131072, 0x4000_0000, 0x20)),
    # FALLOCATE: fh, offset, length, mode PUNCH_HOLE|KEEP_SIZE, padding
    ("fallocate", Opcode.FALLOCATE, p("QQQII", 1, 4096, 8192, 3, 0), (1, 4096, 8192, 3)),
    # LSEEK: fh, offset, whence SEEK_DATA, padding
    ("lseek", Opcode.LSEEK, p("QQII", 1, 100, 3, 0), (1, 100, 3)),
    # COPY_FILE_RANGE(_64): fh_in, off_in, nodeid_out, fh_out, off_out, len, flags
    ("copy_file_range", Opcode.COPY_FILE_RANGE, p("QQQQQQQ", 1, 2, 3, 4, 5, 6, 0), (1, 2, 3, 4, 5, 6, 0)),
    ("copy_file_range_64", Opcode.COPY_FILE_RANGE_64, p("QQQQQQQ", 1, 2, 3, 4, 5, 1 << 40, 0),
     (1, 2, 3, 4, 5, 1 << 40, 0)),
    # STATX: getattr_flags, reserved, fh, sx_flags AT_STATX_SYNC_AS_STAT, sx_mask STATX_BASIC_STATS|BTIME
    ("statx", Opcode.STATX, p("IIQII", 0, 0, 0, 0, 0xFFF), (0, 0, 0, 0xFFF)),
    # SYNCFS: 8 bytes of padding, nothing decoded
    ("syncfs", Opcode.SYNCFS, bytes(8), ()),
    # READLINK / STATFS / DESTROY: no body
    ("readlink", Opcode.READLINK, b"", ()),
    ("statfs", Opcode.STATFS, b"", ()),
    ("destroy", Opcode.DESTROY, b"", ()),
]


@pytest.mark.parametrize(("op", "body", "expected"), [r[1:] for r in GOLDEN], ids=[r[0] for r in GOLDEN])
def test_decode_golden(op: int, body: bytes, expected: tuple) -> None:
    got = dec(op, body)
    assert isinstance(got, tuple)
    assert _plain(got) == expected


def test_decode_accepts_any_buffer() -> None:
    """The worker hands a slice of its read buffer (bytearray or mmap), not bytes."""
    body = p("Q", 5) + b"old\0new\0"
    assert dec(Opcode.RENAME, bytearray(body)) == (5, b"old", b"new")
    framed = bytearray(40) + body
    assert decoder(SPECS[Opcode.RENAME])(memoryview(framed)[40:]) == (5, b"old", b"new")


def test_write_payload_is_a_view_not_a_copy() -> None:
    data = os.urandom(4096)
    buf = bytearray(p("QQIIQII", 3, 0, len(data), 0, 0, 0, 0) + data)
    view = memoryview(buf)
    got = decoder(SPECS[Opcode.WRITE])(view)
    payload = got[-1]
    assert isinstance(payload, memoryview)
    assert payload.obj is buf  # a slice of the request buffer itself
    assert payload.nbytes == len(data) and bytes(payload) == data
    buf[40] ^= 0xFF  # writing the buffer shows through: no copy was made
    assert payload[0] == data[0] ^ 0xFF


def test_names_are_bytes() -> None:
    for value in dec(Opcode.SYMLINK, b"a\0b\0"):
        assert type(value) is bytes
    assert type(dec(Opcode.SETXATTR, p("II", 1, 0) + b"n\0v")[-1]) is bytes


# --- decode: malformed input -------------------------------------------------------------

MALFORMED = [
    # LOOKUP: name without NUL
    ("lookup-no-nul", Opcode.LOOKUP, b"foo"),
    # LOOKUP: empty body
    ("lookup-empty", Opcode.LOOKUP, b""),
    # UNLINK: name without NUL
    ("unlink-no-nul", Opcode.UNLINK, b"x"),
    # MKNOD: struct one byte short
    ("mknod-short", Opcode.MKNOD, p("IIII", 0, 0, 0, 0)[:15]),
    # MKNOD: struct but no name at all
    ("mknod-no-name", Opcode.MKNOD, p("IIII", 0o644, 0, 0, 0)),
    # MKNOD: name without NUL
    ("mknod-no-nul", Opcode.MKNOD, p("IIII", 0o644, 0, 0, 0) + b"dev"),
    # MKDIR: struct short
    ("mkdir-short", Opcode.MKDIR, b"\0\0\0"),
    # RENAME: struct short
    ("rename-short", Opcode.RENAME, p("Q", 1)[:7]),
    # RENAME: only one name
    ("rename-one-name", Opcode.RENAME, p("Q", 1) + b"old\0"),
    # RENAME: second name without NUL
    ("rename-no-nul", Opcode.RENAME, p("Q", 1) + b"old\0new"),
    # RENAME2: struct short (a RENAME body sent as RENAME2)
    ("rename2-short", Opcode.RENAME2, p("Q", 1) + b"ab"),
    # RENAME2: second name missing
    ("rename2-one-name", Opcode.RENAME2, p("QII", 1, 0, 0) + b"a\0"),
    # SYMLINK: target missing
    ("symlink-one-name", Opcode.SYMLINK, b"link\0"),
    # SYMLINK: target without NUL
    ("symlink-no-nul", Opcode.SYMLINK, b"link\0target"),
    # LINK: name without NUL
    ("link-no-nul", Opcode.LINK, p("Q", 1) + b"x"),
    # CREATE: struct short
    ("create-short", Opcode.CREATE, bytes(15)),
    # WRITE: struct short (a 24-byte compat write_in)
    ("write-compat-size", Opcode.WRITE, p("QQII", 1, 0, 0, 0)),
    # WRITE: struct one byte short
    ("write-short", Opcode.WRITE, bytes(39)),
    # WRITE: payload shorter than size
    ("write-short-payload", Opcode.WRITE, p("QQIIQII", 1, 0, 10, 0, 0, 0, 0) + b"hello"),
    # WRITE: size far beyond the body
    ("write-huge-size", Opcode.WRITE, p("QQIIQII", 1, 0, 0xFFFFFFFF, 0, 0, 0, 0) + b"x"),
    # READ: struct one byte short
    ("read-short", Opcode.READ, bytes(39)),
    # SETATTR: struct one byte short
    ("setattr-short", Opcode.SETATTR, bytes(87)),
    # GETATTR: struct short
    ("getattr-short", Opcode.GETATTR, bytes(8)),
    # SETXATTR compat: struct short
    ("setxattr-short", Opcode.SETXATTR, bytes(7)),
    # SETXATTR compat: name without NUL
    ("setxattr-no-nul", Opcode.SETXATTR, p("II", 3, 0) + b"user.x"),
    # SETXATTR compat: value shorter than size
    ("setxattr-short-value", Opcode.SETXATTR, p("II", 10, 0) + b"user.x\0" + b"abc"),
    # GETXATTR: name without NUL
    ("getxattr-no-nul", Opcode.GETXATTR, p("II", 0, 0) + b"user.x"),
    # BATCH_FORGET: struct short
    ("batch_forget-short", Opcode.BATCH_FORGET, b"\x01\0\0\0"),
    # BATCH_FORGET: count 2 but 20 bytes of records (a partial record)
    ("batch_forget-partial-record", Opcode.BATCH_FORGET, p("II", 2, 0) + p("QQ", 10, 1) + b"\0" * 4),
    # BATCH_FORGET: count 2 but only one whole record
    ("batch_forget-count-too-big", Opcode.BATCH_FORGET, p("II", 2, 0) + p("QQ", 10, 1)),
    # INIT: struct short (a pre-7.36 48-byte... here 16 bytes)
    ("init-short", Opcode.INIT, p("IIII", 7, 45, 0, 0)),
    # COPY_FILE_RANGE: struct short
    ("copy_file_range-short", Opcode.COPY_FILE_RANGE, bytes(48)),
    # STATX: struct short
    ("statx-short", Opcode.STATX, bytes(20)),
]


@pytest.mark.parametrize(("op", "body"), [r[1:] for r in MALFORMED], ids=[r[0] for r in MALFORMED])
def test_decode_malformed(op: int, body: bytes) -> None:
    with pytest.raises(Malformed):
        dec(op, body)


@pytest.mark.parametrize("op", sorted(op for op, s in SPECS.items() if s.arg is not None), ids=lambda o: Opcode(o).name)
def test_every_fixed_struct_one_byte_short_is_malformed(op: int) -> None:
    with pytest.raises(Malformed):
        dec(op, bytes(SPECS[op].arg.size - 1))


def test_malformed_is_a_value_error() -> None:
    assert issubclass(Malformed, ValueError)


_ALL_DECODERS = sorted(SPECS)


def _only_malformed(op: int, body: bytes) -> None:
    try:
        out = dec(op, body)
    except Malformed:
        return
    assert isinstance(out, tuple)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_ALL_DECODERS), st.binary(max_size=160))
def test_fuzz_random_bytes_only_malformed_escapes(op: int, body: bytes) -> None:
    _only_malformed(op, body)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_ALL_DECODERS),
    st.integers(0, 0xFFFFFFFF),
    st.lists(st.sampled_from([b"", b"a", b"\0", b"name\0", b"\xff" * 8, b"\0\0"]), max_size=6),
    st.integers(-1, 8),
)
def test_fuzz_structured_only_malformed_escapes(op: int, word: int, parts: list[bytes], cut: int) -> None:
    """A well-sized struct whose size/count words are random, then random names and tails, maybe cut short."""
    arg = SPECS[op].arg
    head = bytearray(arg.size if arg else 0)
    for pos in range(0, len(head) - 3, 4):
        head[pos : pos + 4] = struct.pack("<I", word if pos in (0, 16) else pos)
    body = bytes(head) + b"".join(parts)
    if cut >= 0:
        body = body[: max(0, len(body) - cut)]
    _only_malformed(op, body)


# --- encode ------------------------------------------------------------------------------

# fuse_entry_out written out field by field: 4 u64, 2 u32, then fuse_attr (6 u64, 10 u32)
ENTRY = struct.Struct("<QQQQII" "QQQQQQ" "IIIIIIIIII")
ATTR_OUT = struct.Struct("<QII" "QQQQQQ" "IIIIIIIIII")
ATIME_NS = 1_600_000_000_123_456_789
MTIME_NS = 1_700_000_000_987_654_321


@pytest.fixture
def stat_file(tmp_path: Path) -> os.stat_result:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 12345)
    os.link(f, tmp_path / "second-link")
    os.utime(f, ns=(ATIME_NS, MTIME_NS))
    return os.stat(f)


def _attr_expect(st_: os.stat_result, rdev: int = 0) -> tuple:
    return (st_.st_ino, st_.st_size, st_.st_blocks,
            ATIME_NS // 10**9, MTIME_NS // 10**9, st_.st_ctime_ns // 10**9,
            ATIME_NS % 10**9, MTIME_NS % 10**9, st_.st_ctime_ns % 10**9,
            st_.st_mode, st_.st_nlink, st_.st_uid, st_.st_gid, rdev, st_.st_blksize, 0)  # fmt: skip


def test_entry_out_round_trip(stat_file: os.stat_result) -> None:
    raw = encode.entry_out(42, 7, (1, 500_000_000), (2, 250_000_000), encode.attr(stat_file))
    assert len(raw) == 128
    got = ENTRY.unpack(raw)
    assert got[:6] == (42, 7, 1, 2, 500_000_000, 250_000_000)
    assert got[6:] == _attr_expect(stat_file)
    # spot checks against the stat result itself
    assert got[6] == stat_file.st_ino and got[7] == 12345 and got[16] == 2  # nlink 2
    assert got[15] == stat.S_IFREG | stat.S_IMODE(stat_file.st_mode)
    assert (got[10], got[13]) == (1_700_000_000, 987_654_321)  # mtime with nsec, no float rounding


def test_attr_out_round_trip(stat_file: os.stat_result) -> None:
    raw = encode.attr_out((3, 999_999_999), encode.attr(stat_file))
    assert len(raw) == 104
    got = ATTR_OUT.unpack(raw)
    assert got[:3] == (3, 999_999_999, 0)  # attr_valid, attr_valid_nsec, dummy
    assert got[3:] == _attr_expect(stat_file)


def test_attr_of_a_directory(tmp_path: Path) -> None:
    st_ = os.stat(tmp_path)
    got = abi.ATTR.unpack(encode.attr_out((0, 0), encode.attr(st_))[abi.ATTR_OUT_HEAD.size :])
    assert stat.S_ISDIR(got[9]) and got[0] == st_.st_ino and got[10] == st_.st_nlink


def test_attr_rdev_of_a_real_device() -> None:
    st_ = os.stat("/dev/null")  # char 1:3
    assert encode.attr_values(st_)[13] == abi.new_encode_dev(1, 3) == 0x103


def _fake_stat(**over: int) -> types.SimpleNamespace:
    base = {"st_ino": 5, "st_size": 0, "st_blocks": 0, "st_atime_ns": 0, "st_mtime_ns": 0, "st_ctime_ns": 0,
            "st_mode": stat.S_IFBLK | 0o660, "st_nlink": 1, "st_uid": 0, "st_gid": 6, "st_rdev": 0,
            "st_blksize": 4096}  # fmt: skip
    base.update(over)
    return types.SimpleNamespace(**base)


def test_attr_rdev_large_minor() -> None:
    # glibc dev_t 259:300 -> kernel new_encode_dev 0x11032c
    values = encode.attr_values(_fake_stat(st_rdev=os.makedev(259, 300)))
    assert values[13] == 0x11032C


def test_attr_negative_times_pre_1970() -> None:
    """A file dated before 1970 (tar, rsync -t).  fuse_attr times are u64 that the kernel reads as
    time64_t, so -1.5 s must go out as sec = 2**64 - 2 (two's complement of -2), nsec = 500000000 --
    what libfuse sends (`attr->mtime = st->st_mtime`)."""
    fake = _fake_stat(st_mtime_ns=-1_500_000_000, st_atime_ns=-1, st_ctime_ns=MTIME_NS)
    raw = encode.attr_out((1, 0), encode.attr(fake))  # type: ignore[arg-type]
    got = ATTR_OUT.unpack(raw)
    assert (got[6], got[9]) == ((-1 & 0xFFFFFFFFFFFFFFFF), 999_999_999)  # atime -1 ns = -1 s + 999999999 ns
    assert (got[7], got[10]) == ((-2 & 0xFFFFFFFFFFFFFFFF), 500_000_000)  # mtime -1.5 s


def test_negative_entry() -> None:
    raw = encode.negative_entry((5, 123))
    assert len(raw) == 128
    got = ENTRY.unpack(raw)
    assert got[:6] == (0, 0, 5, 0, 123, 0)  # nodeid 0 + entry_valid: a cached negative entry
    assert raw[40:] == bytes(88)  # all attributes zero


def test_open_out() -> None:
    assert encode.open_out(7, abi.FopenFlag.PASSTHROUGH, 3) == p("QIi", 7, 0x80, 3)
    assert encode.open_out(1, 0) == p("QIi", 1, 0, 0)
    assert len(encode.open_out(1, 0, -1)) == 16  # backing_id is signed


def test_prune_notification() -> None:
    """FUSE_NOTIFY_PRUNE (7.45): fuse_out_header{len, error = notify code 9, unique 0}, then
    fuse_notify_prune_out{count, padding, spare}, then count u64 nodeids."""
    raw = encode.prune([2, 3 << 32 | 7])
    assert raw == p("IiQ", 48, 9, 0) + p("IIQ", 2, 0, 0) + p("QQ", 2, 3 << 32 | 7)


def test_statfs_out(tmp_path: Path) -> None:
    sv = os.statvfs(tmp_path)
    raw = encode.statfs_out(sv)
    assert len(raw) == 80
    got = struct.unpack("<QQQQQIIII6I", raw)
    assert got[:8] == (sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files, sv.f_ffree, sv.f_bsize, sv.f_namemax,
                       sv.f_frsize)  # fmt: skip
    assert got[8:] == (0,) * 7  # padding, spare[6]


@pytest.mark.parametrize("n", list(range(1, 18)) + [255])
def test_dirent_padding(n: int) -> None:
    name = bytes(range(65, 65 + min(n, 26))) * (n // 26 + 1)
    name = name[:n]
    raw = encode.dirent(1234, 99, 8, name)  # DT_REG
    assert len(raw) % 8 == 0
    assert len(raw) == encode.dirent_size(name, False) == (24 + n + 7) // 8 * 8
    assert struct.unpack_from("<QQII", raw) == (1234, 99, n, 8)
    assert raw[24 : 24 + n] == name
    assert raw[24 + n :] == bytes(len(raw) - 24 - n)  # zero padding


def test_dirent_golden() -> None:
    # ino 1, next-cookie 2, namelen 1, DT_DIR 4, "." + 7 pad bytes
    assert encode.dirent(1, 2, 4, b".") == bytes.fromhex(
        "0100000000000000" "0200000000000000" "01000000" "04000000" "2e00000000000000"
    )


@pytest.mark.parametrize(("name", "plain", "plus"), [(b"a", 32, 160), (b"12345678", 32, 160), (b"123456789", 40, 168),
                                                     (b"x" * 255, 280, 408)])  # fmt: skip
def test_dirent_size(name: bytes, plain: int, plus: int) -> None:
    assert encode.dirent_size(name, False) == plain
    assert encode.dirent_size(name, True) == plus
    assert encode.dirent_size(name, True) == abi.ENTRY_OUT_SIZE + len(encode.dirent(1, 1, 0, name))


# --- INIT negotiation -----------------------------------------------------------------------

F = InitFlag
# What a 6.17 kernel offers (fs/fuse/inode.c, fuse_send_init), plus PASSTHROUGH
KERNEL_OFFER = (
    F.ASYNC_READ | F.POSIX_LOCKS | F.ATOMIC_O_TRUNC | F.EXPORT_SUPPORT | F.BIG_WRITES | F.DONT_MASK
    | F.SPLICE_WRITE | F.SPLICE_MOVE | F.SPLICE_READ | F.FLOCK_LOCKS | F.HAS_IOCTL_DIR | F.AUTO_INVAL_DATA
    | F.DO_READDIRPLUS | F.READDIRPLUS_AUTO | F.ASYNC_DIO | F.WRITEBACK_CACHE | F.NO_OPEN_SUPPORT
    | F.PARALLEL_DIROPS | F.HANDLE_KILLPRIV | F.POSIX_ACL | F.ABORT_ERROR | F.MAX_PAGES | F.CACHE_SYMLINKS
    | F.NO_OPENDIR_SUPPORT | F.EXPLICIT_INVAL_DATA | F.HANDLE_KILLPRIV_V2 | F.SETXATTR_EXT | F.INIT_EXT
    | F.SECURITY_CTX | F.CREATE_SUPP_GROUP | F.HAS_EXPIRE_ONLY | F.DIRECT_IO_ALLOW_MMAP | F.NO_EXPORT_SUPPORT
    | F.HAS_RESEND | F.ALLOW_IDMAP | F.REQUEST_TIMEOUT | F.PASSTHROUGH
)  # fmt: skip
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")  # written out from fuse_init_out


def _init_in(minor: int, flags64: int, readahead: int = 128 * 1024, major: int = 7) -> tuple:
    """What the INIT decoder yields for a kernel offer: the 64 bits split into flags and flags2."""
    body = p("IIIII", major, minor, readahead, flags64 & 0xFFFFFFFF, flags64 >> 32) + bytes(44)
    return dec(Opcode.INIT, body)


def _reply(init_in: tuple, extra: int = 0) -> tuple[tuple, init.Negotiated]:
    raw, neg = init.negotiate(init_in, extra)
    assert len(raw) == 64
    return INIT_OUT.unpack(raw), neg


def test_init_reply_full_offer() -> None:
    out, neg = _reply(_init_in(45, KERNEL_OFFER))
    (major, minor, readahead, flags, max_bg, congestion, max_write, time_gran, max_pages, _align, flags2, depth,
     timeout) = out
    assert (major, minor) == (7, 45)
    assert readahead == 128 * 1024
    want = int(KERNEL_OFFER & init.WANTED)
    assert flags | (flags2 << 32) == want
    assert flags & F.INIT_EXT and flags & F.MAX_PAGES
    assert not flags & F.WRITEBACK_CACHE  # asked for only with --writeback-cache: it turns passthrough off
    assert flags2 == want >> 32
    assert max_write == 1 << 20  # 1 MiB
    assert max_pages == 256
    assert time_gran == 1
    assert (max_bg, congestion) == (init.MAX_BACKGROUND, init.CONGESTION_THRESHOLD)
    assert depth == 0 and timeout == 0  # no passthrough, no request timeout asked for
    assert neg.minor == 45 and neg.kernel_minor == 45 and neg.kernel_major == 7
    assert neg.max_write == 1 << 20 and neg.max_pages == 256 and neg.max_readahead == 128 * 1024
    assert set(neg.flags) == {f.name for f in F if want & f}
    assert neg.has(F.MAX_PAGES) and not neg.has(F.WRITEBACK_CACHE)
    assert "WRITEBACK_CACHE" in neg.offered and "PASSTHROUGH" in neg.offered


def test_init_reply_only_what_was_offered() -> None:
    offer = F.ASYNC_READ | F.BIG_WRITES | F.POSIX_LOCKS  # POSIX_LOCKS offered but not wanted
    out, neg = _reply(_init_in(40, offer))
    assert out[3] == F.ASYNC_READ | F.BIG_WRITES
    assert out[10] == 0  # flags2
    assert neg.flags == ["ASYNC_READ", "BIG_WRITES"]
    assert out[8] == 256 and out[6] == 1 << 20  # max_pages/max_write sent even without MAX_PAGES


@pytest.mark.parametrize(("kernel", "agreed"), [(31, 31), (40, 40), (44, 44), (45, 45), (46, 45), (99, 45)])
def test_init_minor_is_the_smaller(kernel: int, agreed: int) -> None:
    out, neg = _reply(_init_in(kernel, KERNEL_OFFER))
    assert out[1] == agreed and neg.minor == agreed and neg.kernel_minor == kernel


@pytest.mark.parametrize("minor", [0, 26, 30])
def test_init_kernel_too_old(minor: int) -> None:
    with pytest.raises(init.KernelTooOld):
        init.negotiate(_init_in(minor, KERNEL_OFFER))


def test_init_flags2_ignored_without_init_ext() -> None:
    """flags2 is read only when the kernel sets INIT_EXT in flags."""
    offer = (KERNEL_OFFER & ~F.INIT_EXT & 0xFFFFFFFF) | F.PASSTHROUGH
    out, neg = _reply(_init_in(45, offer), extra=F.PASSTHROUGH)
    assert out[10] == 0 and out[11] == 0  # flags2, max_stack_depth
    assert not out[3] & F.INIT_EXT
    assert "PASSTHROUGH" not in neg.offered and not neg.has(F.PASSTHROUGH)


def test_init_flags2_passthrough_with_extra() -> None:
    out, neg = _reply(_init_in(45, KERNEL_OFFER), extra=F.PASSTHROUGH)
    assert out[10] & 0x20  # PASSTHROUGH is flags2 bit 5
    assert out[3] & F.INIT_EXT  # so the kernel reads flags2 at all
    assert out[11] == 1  # max_stack_depth in 1..2 or the kernel drops passthrough
    assert not out[3] & F.WRITEBACK_CACHE
    assert neg.has(F.PASSTHROUGH)


def test_init_writeback_cache_excludes_passthrough() -> None:
    """The kernel drops PASSTHROUGH silently when WRITEBACK_CACHE is agreed: the record must not claim it."""
    out, neg = _reply(_init_in(45, KERNEL_OFFER), extra=F.PASSTHROUGH | F.WRITEBACK_CACHE)
    assert out[3] & F.WRITEBACK_CACHE and not out[10] & 0x20 and out[11] == 0
    assert neg.has(F.WRITEBACK_CACHE) and not neg.has(F.PASSTHROUGH)


def test_init_extra_not_offered_is_not_granted() -> None:
    out, neg = _reply(_init_in(45, KERNEL_OFFER & ~F.PASSTHROUGH), extra=F.PASSTHROUGH)
    assert not out[10] & 0x20 and out[11] == 0
    assert not neg.has(F.PASSTHROUGH)


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.integers(31, 60))
def test_init_reply_is_intersection(flags: int, flags2: int, minor: int) -> None:
    init_in = (7, minor, 65536, flags, flags2)
    raw, _neg = init.negotiate(init_in)
    out = INIT_OUT.unpack(raw)
    offered = flags | (flags2 << 32 if flags & F.INIT_EXT else 0)
    use = offered & init.WANTED
    assert out[3] == use & 0xFFFFFFFF
    assert out[10] == use >> 32
    assert out[1] == min(minor, 45)
    assert out[6] == 1 << 20 and out[8] == 256


def test_negotiated_serialises() -> None:
    import msgspec

    _, neg = _reply(_init_in(45, KERNEL_OFFER))
    back = msgspec.json.decode(msgspec.json.encode(neg), type=init.Negotiated)
    assert back == neg


def test_wanted_bits() -> None:
    assert init.WANTED & F.INIT_EXT and init.WANTED & F.MAX_PAGES
    assert not init.WANTED & F.WRITEBACK_CACHE
    assert not init.WANTED & (F.POSIX_LOCKS | F.FLOCK_LOCKS)  # locks stay in the kernel; GETLK/SETLK are ENOSYS
    assert init.MAX_WRITE == 1 << 20 and init.MAX_PAGES == 256


# --- debug ----------------------------------------------------------------------------------

class _Req:
    def __init__(self, opcode: int) -> None:
        self.unique, self.opcode, self.nodeid, self.uid, self.gid, self.pid = 8, opcode, 1, 1000, 100, 4321


def test_debug_open_flags() -> None:
    assert debug.open_flags(os.O_RDONLY) == "O_RDONLY"
    text = debug.open_flags(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert text.split("|") == ["O_WRONLY", "O_CREAT", "O_TRUNC"]
    assert "O_RDONLY" not in debug.open_flags(os.O_RDWR)
    assert "O_SYNC" not in debug.open_flags(os.O_DSYNC)  # O_SYNC only when all its bits are set


def test_debug_describe_request() -> None:
    line = debug.describe_request("OPEN", _Req(Opcode.OPEN), (os.O_RDWR, 0))
    assert line.startswith("8 OPEN node=1 uid=1000 gid=100 pid=4321 (")
    assert "O_RDWR" in line
    line = debug.describe_request("WRITE", _Req(Opcode.WRITE), (1, 0, 100, 0, 0, 0, memoryview(b"z" * 100)))
    assert "[100]" in line and "..." in line  # long payloads are cut, length shown
    line = debug.describe_request("BATCH_FORGET", _Req(Opcode.BATCH_FORGET), ([(1, 1), (2, 2)],))
    assert "[2 items]" in line


def test_debug_setattr_valid_by_name() -> None:
    """debug.py promises "flags by name"; SETATTR's valid mask is shown through str(Fattr(valid))."""
    line = debug.describe_request("SETATTR", _Req(Opcode.SETATTR), (int(Fattr.MODE | Fattr.SIZE), 0, 10))
    assert "MODE" in line and "SIZE" in line, line


def test_debug_describe_reply() -> None:
    assert debug.describe_reply("LOOKUP", 4, -2, None) == "4 LOOKUP error ENOENT"
    assert debug.describe_reply("GETATTR", 4, 0, b"x" * 104) == "4 GETATTR ok 104 bytes"
    assert debug.describe_reply("UNLINK", 4, 0, None) == "4 UNLINK ok 0 bytes"
