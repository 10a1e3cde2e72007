"""Attributes through the mount: modes, owners, times, stat and statx fields, access(2).

Every case runs on fastpass and on a bind mount (the kernel's own answer).
Where the expected result is the kernel's rule (setuid cleared by chown,
say), the same calls are made on a reference file straight in the backing.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import time

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
SYS_STATX = 332  # x86_64
STATX_BASIC_STATS, STATX_BTIME = 0x7FF, 0x800
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec), ctypes.c_int]


def utimensat(path, atime: tuple[int, int], mtime: tuple[int, int], flags: int = 0) -> None:
    ts = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if libc.utimensat(AT_FDCWD, os.fsencode(path), ts, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


def statx(path, mask: int = STATX_BASIC_STATS | STATX_BTIME) -> dict:
    """The fields of struct statx the tests compare."""
    buf = ctypes.create_string_buffer(256)
    ret = libc.syscall(SYS_STATX, AT_FDCWD, ctypes.c_char_p(os.fsencode(path)), AT_SYMLINK_NOFOLLOW,
                       ctypes.c_uint(mask), buf)  # fmt: skip
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    raw = buf.raw
    mask_, _blksize, _attrs, nlink, uid, gid, mode = struct.unpack_from("<IIQIIIH", raw, 0)
    ino, size, blocks = struct.unpack_from("<QQQ", raw, 32)
    times = {n: struct.unpack_from("<qI", raw, off) for n, off in (("atime", 64), ("btime", 80), ("ctime", 96),
                                                                      ("mtime", 112))}  # fmt: skip
    rdev = struct.unpack_from("<II", raw, 128)
    return dict(mask=mask_, nlink=nlink, uid=uid, gid=gid, mode=mode, ino=ino, size=size, blocks=blocks,
                rdev=rdev, **times)  # fmt: skip


FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_rdev", "st_blksize",
          "st_atime_ns", "st_mtime_ns", "st_ctime_ns")  # fmt: skip


def attrs(path, fields=FIELDS) -> dict:
    st = os.lstat(path)
    return {f: getattr(st, f) for f in fields}


def kernel_times(fs, name: str) -> tuple[str, ...]:
    """The times of `name` that are the kernel's own, not the backing's: under the writeback cache
    a regular file's mtime and ctime, from the kernel's clock at the write (docs/caching.md)."""
    return ("mtime", "ctime") if fs.writeback and stat.S_ISREG(os.lstat(fs.backing / name).st_mode) else ()


def assert_same(fs, name: str, fields=FIELDS) -> None:
    """`name`'s attributes through the mount equal the backing's (but `kernel_times`)."""
    own = {f"st_{t}_ns" for t in kernel_times(fs, name)}
    fields = tuple(f for f in fields if f not in own)
    assert attrs(fs.mnt / name, fields) == attrs(fs.backing / name, fields), name


def test_chmod_chown(fs):
    """chmod (setuid/setgid/sticky) by path and fd, chown/fchown/lchown; modes follow the kernel's rules."""
    m, b = fs.mnt, fs.backing
    (m / "f").write_bytes(b"#!/bin/sh\n")
    (m / "d").mkdir()
    (b / "ref").write_bytes(b"")
    fd = os.open(m / "f", os.O_RDONLY)
    try:
        for mode in (0o644, 0o4755, 0o2755, 0o6777, 0o1777, 0o000, 0o7777, 0o4000, 0o600):
            os.chmod(m / "f", mode)
            assert stat.S_IMODE(os.stat(m / "f").st_mode) == stat.S_IMODE(os.stat(b / "f").st_mode) == mode
            os.chmod(m / "d", mode)
            assert os.stat(m / "d").st_mode == os.stat(b / "d").st_mode == stat.S_IFDIR | mode
            os.fchmod(fd, mode ^ 0o111)
            assert os.fstat(fd).st_mode == os.stat(b / "f").st_mode == stat.S_IFREG | (mode ^ 0o111)
        for uid, gid in ((1234, 5678), (-1, 99), (4321, -1), (0, 0), (65534, 65534)):
            want = os.stat(b / "f")
            os.chown(m / "f", uid, gid)
            st = os.stat(m / "f")
            assert (st.st_uid, st.st_gid) == (want.st_uid if uid < 0 else uid, want.st_gid if gid < 0 else gid)
            assert (st.st_uid, st.st_gid) == (os.stat(b / "f").st_uid, os.stat(b / "f").st_gid)
            os.fchown(fd, gid, uid)
            assert_same(fs, "f")
        # chown of a setuid/setgid executable clears those bits: as on the backing itself.
        for mode in (0o6755, 0o6745, 0o4700, 0o2710):
            for path in (m / "f", b / "ref"):
                os.chmod(path, mode)
                os.chown(path, 1000, 1000)
            assert os.stat(m / "f").st_mode == os.stat(b / "f").st_mode == os.stat(b / "ref").st_mode, oct(mode)
            os.fchmod(fd, mode)
            os.fchown(fd, 2000, -1)
            os.chmod(b / "ref", mode)
            os.chown(b / "ref", 2000, -1)
            assert os.fstat(fd).st_mode == os.stat(b / "f").st_mode == os.stat(b / "ref").st_mode, oct(mode)
    finally:
        os.close(fd)

    # lchown changes the symlink, not its target.
    os.symlink("f", m / "ln")
    before = os.stat(b / "f")
    os.chown(m / "ln", 7, 8, follow_symlinks=False)
    assert (os.lstat(b / "ln").st_uid, os.lstat(b / "ln").st_gid) == (7, 8)
    assert (os.lstat(m / "ln").st_uid, os.lstat(m / "ln").st_gid) == (7, 8)
    assert os.stat(b / "f").st_uid == before.st_uid
    for p in ("f", "d", "ln"):
        assert_same(fs, p)


TIMES = [  # (atime_ns, mtime_ns)
    (1_000_000_123_456_789, 1_500_000_000_987_654_321),
    (0, 1),
    (1_700_000_000_000_000_000, 1_700_000_000_999_999_999),
    (4_102_444_800_000_000_001, 2**31 * 10**9 + 5),  # year 2100; past 2038
    (-315_619_200_000_000_000 + 7, -1_000_000_000),  # before 1970
]


def test_times(fs):
    """utime with explicit ns, with None (now), on an fd, and utimensat UTIME_OMIT / UTIME_NOW per field."""
    m, b = fs.mnt, fs.backing
    (m / "f").write_bytes(b"data")
    (m / "d").mkdir()
    os.symlink("f", m / "ln")
    for name in ("f", "d"):
        for a, mt in TIMES:
            os.utime(m / name, ns=(a, mt))
            got = os.stat(m / name)
            assert (got.st_atime_ns, got.st_mtime_ns) == (a, mt), (name, a, mt)
            assert_same(fs, name)

    # None: both become now.
    before = time.time_ns() - 20_000_000  # the filesystem clock is coarse
    os.utime(m / "f", None)
    after = time.time_ns() + 20_000_000
    st = os.stat(m / "f")
    assert before <= st.st_atime_ns <= after and before <= st.st_mtime_ns <= after
    assert_same(fs, "f")

    # On an open fd (futimens).
    fd = os.open(m / "f", os.O_RDONLY)
    try:
        os.utime(fd, ns=(123_456_789_012_345_678, 987_654_321_098_765_432))
        assert (os.fstat(fd).st_atime_ns, os.fstat(fd).st_mtime_ns) == (
            123_456_789_012_345_678,
            987_654_321_098_765_432,
        )
    finally:
        os.close(fd)
    assert_same(fs, "f")

    # UTIME_OMIT leaves one field alone; UTIME_NOW sets one to now.
    os.utime(m / "f", ns=(1_111_111_111_111_111_111, 1_222_222_222_222_222_222))
    utimensat(m / "f", (0, UTIME_OMIT), (1_333_333_333, 333_333_333))
    st = os.stat(m / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_111_111_111_111_111_111, 1_333_333_333_333_333_333)
    utimensat(m / "f", (1_444_444_444, 444_444_444), (0, UTIME_OMIT))
    st = os.stat(m / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_444_444_444_444_444_444, 1_333_333_333_333_333_333)
    assert_same(fs, "f")
    before = time.time_ns() - 20_000_000
    utimensat(m / "f", (0, UTIME_OMIT), (0, UTIME_NOW))
    st = os.stat(m / "f")
    assert st.st_atime_ns == 1_444_444_444_444_444_444 and before <= st.st_mtime_ns <= time.time_ns() + 20_000_000
    utimensat(m / "f", (0, UTIME_OMIT), (0, UTIME_OMIT))  # changes nothing
    assert os.stat(m / "f").st_mtime_ns == st.st_mtime_ns
    assert_same(fs, "f")

    # The symlink's own times (lutimes), the target's untouched.
    target = os.stat(b / "f")
    os.utime(m / "ln", ns=(5_000_000_000_000_000_005, 6_000_000_000_000_000_006), follow_symlinks=False)
    assert (os.lstat(b / "ln").st_atime_ns, os.lstat(b / "ln").st_mtime_ns) == (5_000_000_000_000_000_005,
                                                                                6_000_000_000_000_000_006)  # fmt: skip
    assert_same(fs, "ln")
    assert os.stat(b / "f").st_mtime_ns == target.st_mtime_ns

    # A write moves mtime and ctime as the backing does.
    os.utime(m / "f", ns=(10**18, 10**18))
    with open(m / "f", "ab") as f:
        f.write(b"more")
    assert os.stat(m / "f").st_mtime_ns > 10**18
    assert_same(fs, "f", FIELDS[:-3] + ("st_mtime_ns", "st_ctime_ns"))


def test_stat_fields_match_backing(fs):
    """st_* (ino, nlink, size, blocks, rdev, times) and statx (with btime) equal the backing's; truncate resizes."""
    m, b = fs.mnt, fs.backing
    (m / "data").write_bytes(os.urandom(100_000))
    with open(m / "sparse", "wb") as f:
        f.truncate(10 << 20)
        f.write(b"x")
    (m / "dir").mkdir()
    for i in range(3):
        (m / "dir" / f"s{i}").mkdir()
    (m / "empty").write_bytes(b"")
    os.link(m / "data", m / "hard")
    os.symlink("data", m / "sym")
    os.mkfifo(m / "fifo")
    os.mknod(m / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    names = ["", "data", "sparse", "dir", "dir/s1", "empty", "hard", "sym", "fifo", "null"]
    for name in names:
        assert_same(fs, name)
        sm, sb = statx(m / name), statx(b / name)
        if fs.engine == "pyfuse3":  # no STATX through pyfuse3 (docs/io.md): the kernel knows no birth time
            assert not sm["mask"] & STATX_BTIME, name
        else:
            assert sm["mask"] & STATX_BTIME == sb["mask"] & STATX_BTIME, name
            assert sm["btime"] == sb["btime"], name
        for f in ("nlink", "uid", "gid", "mode", "ino", "size", "blocks", "rdev", "atime", "mtime", "ctime"):
            assert sm[f] == sb[f] or f in kernel_times(fs, name), (name, f)
    assert statx(b / "data")["mask"] & STATX_BTIME  # ext4 has a birth time: the check above meant something
    st = os.stat(m / "data")
    assert (st.st_nlink, st.st_size) == (2, 100_000)
    assert os.stat(m / "dir").st_nlink == 5
    assert os.stat(m / "null").st_rdev == os.makedev(1, 3)

    for size in (5, 0, 1 << 20, 4097):
        os.truncate(m / "data", size)
        assert os.stat(m / "data").st_size == os.stat(m / "hard").st_size == size
        assert_same(fs, "data")
        assert attrs(b / "data") == attrs(b / "hard")
        sm = statx(m / "hard")
        assert (sm["size"], sm["blocks"], sm["btime"]) == (
            size,
            os.stat(b / "hard").st_blocks,
            (0, 0) if fs.engine == "pyfuse3" else statx(b / "data")["btime"],  # no STATX through pyfuse3
        )


ACCESS = [os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK, os.R_OK | os.X_OK, os.R_OK | os.W_OK | os.X_OK]


def test_access(fs):
    """os.access answers as on the backing (root: r/w always, x when any x bit is set)."""
    m, b = fs.mnt, fs.backing
    modes = (0o000, 0o100, 0o010, 0o001, 0o644, 0o755, 0o4000)
    for mode in modes:
        (m / f"f{mode:o}").write_bytes(b"")
        os.chmod(m / f"f{mode:o}", mode)
        os.mkdir(m / f"d{mode:o}", mode)
    for mode in modes:
        for name in (f"f{mode:o}", f"d{mode:o}"):
            got = [os.access(m / name, a) for a in ACCESS]
            assert got == [os.access(b / name, a) for a in ACCESS], name
            assert got[:3] == [True, True, True]
    assert os.access(m / "f0", os.X_OK) is False and os.access(m / "f755", os.X_OK) is True
    assert os.access(m / "missing", os.F_OK) is False
