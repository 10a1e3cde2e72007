"""Regular files through the mount: data, sizes, renames, holes, mmap, O_DIRECT.

Every case runs on fastpass and on a bind mount (the kernel's own answer);
results are checked through the mount and against the backing directory.
Cases are grouped into a few tests, one mount each.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import stat

from tests.conftest import err

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
SYS_RENAMEAT2 = 316  # x86_64
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
RWF_NOAPPEND = 0x20  # Linux 6.9
MiB = 1 << 20


def renameat2(old, new, flags: int) -> None:
    ret = libc.syscall(SYS_RENAMEAT2, AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags))
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


def link_fd(fd: int, new) -> None:
    """linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, new, AT_SYMLINK_FOLLOW): os.link would call link(2)."""
    if libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, os.fsencode(new), AT_SYMLINK_FOLLOW) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(new))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def pread_all(fd: int, size: int, offset: int = 0) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def same(fs, name: str) -> bytes:
    """Content of `name` read through the mount, asserted equal to the backing's."""
    data = (fs.mnt / name).read_bytes()
    assert data == (fs.backing / name).read_bytes(), name
    assert os.stat(fs.mnt / name).st_size == os.stat(fs.backing / name).st_size == len(data)
    return data


def test_create_write_read_at_offsets(fs):
    """create, pwrite/overwrite at offsets, O_APPEND (two fds), O_TRUNC, O_EXCL and O_CREAT modes."""
    m, b = fs.mnt, fs.backing
    model = bytearray()

    def put(data: bytes, off: int) -> None:
        model[len(model) :] = bytes(max(0, off + len(data) - len(model)))
        model[off : off + len(data)] = data

    fd = os.open(m / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off, data in [(0, b"hello world"), (6, b"WORLD"), (100_000, b"far"), (5, b"_" * 70_000), (0, b"H")]:
            assert os.pwrite(fd, data, off) == len(data)
            put(data, off)
            assert os.pread(fd, len(data), off) == data
        assert pread_all(fd, len(model) + 10) == model
        assert os.fstat(fd).st_size == len(model)
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.write(fd, b"seq") == 3 and os.read(fd, 3) == model[3:6]
        put(b"seq", 0)
    finally:
        os.close(fd)
    assert same(fs, "f") == model

    # O_EXCL on an existing name; O_CREAT without O_EXCL opens it as is.
    assert err(os.open, m / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) == errno.EEXIST
    os.close(os.open(m / "f", os.O_WRONLY | os.O_CREAT, 0o600))
    assert same(fs, "f") == model and stat.S_IMODE(os.stat(b / "f").st_mode) == 0o644

    # O_APPEND from two fds interleaves at the end, whatever the fd's offset.
    a1 = os.open(m / "f", os.O_WRONLY | os.O_APPEND)
    a2 = os.open(m / "f", os.O_WRONLY | os.O_APPEND)
    try:
        for fd_, chunk in [(a1, b"<one>"), (a2, b"<two>"), (a1, b"<three>"), (a2, b"<four>")]:
            assert os.write(fd_, chunk) == len(chunk)
            model += chunk
            assert os.lseek(fd_, 0, os.SEEK_CUR) == len(model)
        # pwrite on an O_APPEND fd appends too (Linux); RWF_NOAPPEND makes it write in place.
        assert os.pwrite(a1, b"<p>", 0) == 3
        model += b"<p>"
        assert os.pwritev(a2, [b"NOAPP"], 2, RWF_NOAPPEND) == 5
        if fs.passthrough:
            # Linux 6.18's passthrough opens its backing file with the app's flags, O_APPEND
            # included, and does not carry RWF_NOAPPEND over: the write appends.
            model += b"NOAPP"
        else:
            model[2:7] = b"NOAPP"
        assert (m / "f").read_bytes() == model
    finally:
        os.close(a1)
        os.close(a2)
    assert same(fs, "f") == model

    # O_TRUNC empties it; the inode stays the same.
    ino = os.stat(b / "f").st_ino
    fd = os.open(m / "f", os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"new")
    os.close(fd)
    assert same(fs, "f") == b"new" and os.stat(b / "f").st_ino == ino == os.stat(m / "f").st_ino
    os.close(os.open(m / "f", os.O_RDONLY | os.O_TRUNC))  # Linux truncates even read-only
    assert same(fs, "f") == b""

    # O_CREAT modes (umask 0 so the mode arrives as given); the kernel's answer is the backing's.
    old = os.umask(0)
    try:
        for mode in (0o600, 0o644, 0o755, 0o000, 0o4755, 0o2755, 0o1777, 0o7777):
            name = f"mode{mode:o}"
            os.close(os.open(m / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            os.close(os.open(b / (name + ".ref"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            want = os.stat(b / (name + ".ref")).st_mode
            assert os.stat(m / name).st_mode == os.stat(b / name).st_mode == want, name
        os.umask(0o027)
        os.close(os.open(m / "masked", os.O_WRONLY | os.O_CREAT, 0o777))
        assert stat.S_IMODE(os.stat(m / "masked").st_mode) == stat.S_IMODE(os.stat(b / "masked").st_mode) == 0o750
    finally:
        os.umask(old)


def test_errors(fs):
    """ENOENT, EISDIR, ENOTDIR, EEXIST, ENOTEMPTY from ordinary calls, as the kernel gives them."""
    m = fs.mnt
    (m / "file").write_bytes(b"x")
    (m / "dir").mkdir()
    (m / "full").mkdir()
    (m / "full" / "inside").write_bytes(b"")
    cases = [
        (os.open, (m / "missing", os.O_RDONLY), errno.ENOENT),
        (os.stat, (m / "missing",), errno.ENOENT),
        (os.unlink, (m / "missing",), errno.ENOENT),
        (os.open, (m / "nodir" / "x", os.O_WRONLY | os.O_CREAT, 0o644), errno.ENOENT),
        (os.open, (m / "dir", os.O_WRONLY), errno.EISDIR),
        (os.open, (m / "dir", os.O_RDWR), errno.EISDIR),
        (os.unlink, (m / "dir",), errno.EISDIR),
        (os.rename, (m / "file", m / "dir"), errno.EISDIR),
        (os.open, (m / "file" / "x", os.O_RDONLY), errno.ENOTDIR),
        (os.open, (m / "file", os.O_RDONLY | os.O_DIRECTORY), errno.ENOTDIR),
        (os.mkdir, (m / "file" / "x",), errno.ENOTDIR),
        (os.rmdir, (m / "file",), errno.ENOTDIR),
        (os.listdir, (m / "file",), errno.ENOTDIR),
        (os.rename, (m / "dir", m / "file"), errno.ENOTDIR),
        (os.mkdir, (m / "file",), errno.EEXIST),
        (os.rmdir, (m / "full",), errno.ENOTEMPTY),
        (os.rename, (m / "dir", m / "full"), errno.ENOTEMPTY),
        (os.rename, (m / "full", m / "full" / "inside" / "x"), errno.ENOTDIR),
        (os.rename, (m / "dir", m / "dir" / "sub"), errno.EINVAL),  # into itself
    ]
    got = [(fn.__name__, args[0].name, errno.errorcode.get(err(fn, *args), "OK")) for fn, args, _ in cases]
    want = [(fn.__name__, args[0].name, errno.errorcode[e]) for fn, args, e in cases]
    assert got == want
    fd = os.open(m / "dir", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert err(os.read, fd, 10) == errno.EISDIR
    finally:
        os.close(fd)
    assert sorted(os.listdir(fs.backing)) == ["dir", "file", "full"]


def test_truncate_and_large_file(fs):
    """truncate up/down by path and fd; an 8 MiB write+read with checksum; fsync, fdatasync; statvfs."""
    m, b = fs.mnt, fs.backing
    data = os.urandom(10_000)
    (m / "t").write_bytes(data)
    expect = bytearray(data)
    for how, size in [("path", 20_000), ("path", 4_000), ("fd", 123_457), ("fd", 1), ("path", 0), ("fd", 5000)]:
        if how == "path":
            os.truncate(m / "t", size)
        else:
            fd = os.open(m / "t", os.O_RDWR)
            try:
                os.ftruncate(fd, size)
                assert os.fstat(fd).st_size == size
            finally:
                os.close(fd)
        expect = expect[:size] + bytes(max(0, size - len(expect)))
        assert os.stat(m / "t").st_size == os.stat(b / "t").st_size == size, (how, size)
        assert same(fs, "t") == expect
    assert err(os.truncate, m / "t", -1) == errno.EINVAL
    assert err(os.truncate, m, 0) == errno.EISDIR

    big = os.urandom(8 * MiB)
    digest = hashlib.sha256(big).hexdigest()
    fd = os.open(m / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        view = memoryview(big)
        pos = 0
        while pos < len(big):
            pos += os.write(fd, view[pos : pos + 3 * MiB // 2])  # not page aligned
        os.fdatasync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.stat(m / "big").st_size == os.stat(b / "big").st_size == 8 * MiB
    h = hashlib.sha256()
    with open(m / "big", "rb", buffering=0) as f:
        while chunk := f.read(MiB + 7):
            h.update(chunk)
    assert h.hexdigest() == digest
    assert hashlib.sha256((b / "big").read_bytes()).hexdigest() == digest
    fd = os.open(m / "big", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 5 * MiB - 50) == big[5 * MiB - 50 : 5 * MiB + 50]
        assert os.pread(fd, 100, 8 * MiB - 10) == big[-10:]
        assert os.pread(fd, 100, 9 * MiB) == b""
    finally:
        os.close(fd)

    sm, sb = os.statvfs(m), os.statvfs(b)
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_namemax", "f_files"):
        assert getattr(sm, field) == getattr(sb, field), field
    assert abs(sm.f_bfree - sb.f_bfree) < sb.f_blocks // 100


def test_unlinked_open_file_and_tmpfile(fs):
    """An unlinked file stays readable and writable through its fd; O_TMPFILE then linkat makes a name."""
    m, b = fs.mnt, fs.backing
    (m / "u").write_bytes(b"before")
    fd = os.open(m / "u", os.O_RDWR)
    try:
        os.unlink(m / "u")
        assert not (b / "u").exists() and not (m / "u").exists()
        assert os.pread(fd, 100, 0) == b"before"
        assert os.pwrite(fd, b"-after", 6) == 6
        assert os.pread(fd, 100, 0) == b"before-after"
        os.ftruncate(fd, 3)
        st = os.fstat(fd)
        assert (st.st_size, st.st_nlink) == (3, 0)
        assert os.pread(fd, 100, 0) == b"bef"
        os.fsync(fd)
        # Attributes of the nameless file still change through its fd.
        os.fchown(fd, 1001, 1002)
        os.fchmod(fd, 0o4711)
        os.utime(fd, ns=(10**18 + 1, 10**18 + 2))
        os.setxattr(fd, "user.gone", b"still here")
        st = os.fstat(fd)
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns) == (
            stat.S_IFREG | 0o4711, 1001, 1002, 10**18 + 1, 10**18 + 2)  # fmt: skip
        assert os.getxattr(fd, "user.gone") == b"still here"
        # ... but it cannot get a name again (it was not O_TMPFILE).
        assert err(link_fd, fd, m / "again") == errno.ENOENT
    finally:
        os.close(fd)
    assert os.listdir(b) == os.listdir(m) == []

    (m / "d").mkdir()
    if fs.engine == "pyfuse3":  # libfuse through pyfuse3 has no TMPFILE operation (docs/io.md: Engines)
        assert err(os.open, m / "d", os.O_TMPFILE | os.O_RDWR, 0o640) == errno.EOPNOTSUPP
        assert os.listdir(b / "d") == []
        return
    fd = os.open(m / "d", os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        assert os.listdir(m / "d") == os.listdir(b / "d") == []
        os.write(fd, b"anonymous")
        assert os.fstat(fd).st_nlink == 0
        link_fd(fd, m / "d" / "named")
        assert os.fstat(fd).st_nlink == 1
        os.write(fd, b"+more")
    finally:
        os.close(fd)
    assert same(fs, "d/named") == b"anonymous+more"
    assert stat.S_IMODE(os.stat(b / "d" / "named").st_mode) == 0o640
    assert os.stat(m / "d" / "named").st_ino == os.stat(b / "d" / "named").st_ino
    # O_TMPFILE | O_EXCL may never be linked.
    fd = os.open(m / "d", os.O_TMPFILE | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        assert err(link_fd, fd, m / "d" / "never") == errno.ENOENT
    finally:
        os.close(fd)
    assert os.listdir(b / "d") == ["named"]


def test_rename(fs):
    """rename over a file and an empty dir; renameat2 NOREPLACE, EXCHANGE, WHITEOUT and bad flags."""
    m, b = fs.mnt, fs.backing
    (m / "src").write_bytes(b"source")
    (m / "dst").write_bytes(b"target")
    ino = os.stat(b / "src").st_ino
    held = os.open(m / "dst", os.O_RDONLY)
    try:
        os.rename(m / "src", m / "dst")
        assert os.pread(held, 100, 0) == b"target" and os.fstat(held).st_nlink == 0  # the replaced file lives on
    finally:
        os.close(held)
    assert sorted(os.listdir(b)) == ["dst"] and same(fs, "dst") == b"source"
    assert os.stat(m / "dst").st_ino == os.stat(b / "dst").st_ino == ino
    assert err(os.stat, m / "src") == errno.ENOENT
    os.link(m / "dst", m / "alias")
    os.rename(m / "dst", m / "alias")  # two names of one inode: nothing happens
    assert sorted(os.listdir(b)) == sorted(os.listdir(m)) == ["alias", "dst"]
    os.unlink(m / "alias")

    (m / "d1").mkdir()
    (m / "d1" / "kid").write_bytes(b"k")
    (m / "d2").mkdir()
    os.rename(m / "d1", m / "d2")
    assert os.listdir(m / "d2") == os.listdir(b / "d2") == ["kid"] and not (b / "d1").exists()
    (m / "sub").mkdir()
    os.rename(m / "dst", m / "sub" / "moved")  # across directories
    assert same(fs, "sub/moved") == b"source"

    # RENAME_NOREPLACE
    (m / "a").write_bytes(b"A")
    (m / "b").write_bytes(b"B")
    assert err(renameat2, m / "a", m / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert (same(fs, "a"), same(fs, "b")) == (b"A", b"B")
    renameat2(m / "a", m / "c", RENAME_NOREPLACE)
    assert same(fs, "c") == b"A" and not (b / "a").exists()

    # RENAME_EXCHANGE: file with file, file with dir; a missing side is ENOENT.
    renameat2(m / "b", m / "c", RENAME_EXCHANGE)
    assert (same(fs, "b"), same(fs, "c")) == (b"A", b"B")
    renameat2(m / "b", m / "sub", RENAME_EXCHANGE)
    assert stat.S_ISDIR(os.stat(b / "b").st_mode) and os.listdir(m / "b") == ["moved"]
    assert same(fs, "sub") == b"A"
    assert err(renameat2, m / "c", m / "nothere", RENAME_EXCHANGE) == errno.ENOENT

    # Invalid flags are EINVAL and change nothing.
    for flags in (1 << 5, RENAME_NOREPLACE | RENAME_EXCHANGE, RENAME_EXCHANGE | RENAME_WHITEOUT):
        assert err(renameat2, m / "c", m / "e", flags) == errno.EINVAL, flags
    assert same(fs, "c") == b"B"

    # RENAME_WHITEOUT: whatever the backing filesystem answers to the same call directly.
    (b / "ref").write_bytes(b"r")
    want = err(renameat2, b / "ref", b / "ref2", RENAME_WHITEOUT)
    assert err(renameat2, m / "c", m / "w", RENAME_WHITEOUT) == want
    if want == 0:
        assert same(fs, "w") == b"B"
        st = os.lstat(b / "c")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # the whiteout left behind
        assert stat.S_ISCHR(os.lstat(m / "c").st_mode)


def test_holes_and_fallocate(fs):
    """SEEK_DATA/SEEK_HOLE on a sparse file; posix_fallocate, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE."""
    m, b = fs.mnt, fs.backing
    fd = os.open(m / "sparse", os.O_RDWR | os.O_CREAT, 0o644)
    bfd = os.open(b / "sparse", os.O_RDONLY)
    try:
        os.pwrite(fd, b"a" * 4096, 0)
        os.pwrite(fd, b"b" * 8192, MiB)
        os.ftruncate(fd, 4 * MiB)
        os.fsync(fd)
        if fs.engine == "pyfuse3":  # no LSEEK, no FALLOCATE through pyfuse3 (docs/io.md): the kernel's answers
            assert os.lseek(fd, 0, os.SEEK_HOLE) == 4 * MiB and os.lseek(fd, 4096, os.SEEK_DATA) == 4096
            assert err(fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == errno.EOPNOTSUPP
            assert os.pread(fd, 8192, MiB) == b"b" * 8192 == os.pread(bfd, 8192, MiB)
            return
        if fs.writeback:  # the kernel's answers from its own size (docs/caching.md: The writeback cache)
            assert os.lseek(fd, 0, os.SEEK_HOLE) == 4 * MiB and os.lseek(fd, 4096, os.SEEK_DATA) == 4096
        else:
            probes = [(os.SEEK_DATA, 0), (os.SEEK_HOLE, 0), (os.SEEK_DATA, 4096), (os.SEEK_HOLE, MiB),
                      (os.SEEK_DATA, MiB + 8192), (os.SEEK_HOLE, 3 * MiB)]  # fmt: skip
            for whence, off in probes:
                assert err(os.lseek, fd, off, whence) == err(os.lseek, bfd, off, whence)
                if err(os.lseek, bfd, off, whence) == 0:
                    assert os.lseek(fd, off, whence) == os.lseek(bfd, off, whence), (whence, off)
            assert os.lseek(fd, 0, os.SEEK_HOLE) == 4096 and os.lseek(fd, 4096, os.SEEK_DATA) == MiB
            assert err(os.lseek, fd, MiB + 8192, os.SEEK_DATA) == errno.ENXIO
        assert err(os.lseek, fd, 5 * MiB, os.SEEK_HOLE) == errno.ENXIO
        assert os.stat(m / "sparse").st_blocks == os.stat(b / "sparse").st_blocks < 4 * MiB // 512

        # posix_fallocate beyond EOF grows the file and allocates.
        os.posix_fallocate(fd, 4 * MiB, MiB)
        assert os.fstat(fd).st_size == os.stat(b / "sparse").st_size == 5 * MiB
        blocks = os.stat(b / "sparse").st_blocks
        assert os.stat(m / "sparse").st_blocks == blocks >= (MiB + 12288) // 512

        # Punch a hole into the data at 1 MiB; the size stays.
        (b / "probe").write_bytes(b"x" * 8192)
        pfd = os.open(b / "probe", os.O_RDWR)
        try:
            punch = err(fallocate, pfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
            zero = err(fallocate, pfd, FALLOC_FL_ZERO_RANGE, 4096, 4096)
        finally:
            os.close(pfd)
        if punch == 0:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB, 4096)
            assert os.fstat(fd).st_size == 5 * MiB
            assert os.pread(fd, 8192, MiB) == bytes(4096) + b"b" * 4096
            assert os.pread(bfd, 8192, MiB) == bytes(4096) + b"b" * 4096
            assert os.lseek(bfd, MiB, os.SEEK_DATA) == MiB + 4096
            assert os.lseek(fd, MiB, os.SEEK_DATA) == (MiB if fs.writeback else MiB + 4096)
            assert os.stat(m / "sparse").st_blocks == os.stat(b / "sparse").st_blocks == blocks - 8
            # PUNCH_HOLE without KEEP_SIZE is invalid.
            assert err(fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 4096) == errno.EOPNOTSUPP
        if zero == 0:
            fallocate(fd, FALLOC_FL_ZERO_RANGE, 10, 100)
            assert os.pread(fd, 200, 0) == b"a" * 10 + bytes(100) + b"a" * 90
            fallocate(fd, FALLOC_FL_ZERO_RANGE, 5 * MiB, 4096)  # beyond EOF: grows
            assert os.fstat(fd).st_size == os.stat(b / "sparse").st_size == 5 * MiB + 4096
        assert os.pread(bfd, 200, 0) == os.pread(fd, 200, 0)
    finally:
        os.close(fd)
        os.close(bfd)


def test_copy_file_range_and_sync(fs):
    """copy_file_range between two files on the mount, at offsets; fsync and fdatasync on both."""
    m = fs.mnt
    src = os.urandom(3 * MiB + 123)
    (m / "src").write_bytes(src)
    (m / "dst").write_bytes(b"=" * 1000)
    fin = os.open(m / "src", os.O_RDONLY)
    fout = os.open(m / "dst", os.O_WRONLY)
    try:
        done = 0
        count = 2 * MiB + 17
        while done < count:
            n = os.copy_file_range(fin, fout, count - done, 4099 + done, 100 + done)
            assert n > 0
            done += n
        # with no offsets: the fds' own positions are used and advanced
        os.lseek(fin, 10, os.SEEK_SET)
        os.lseek(fout, 0, os.SEEK_END)
        assert os.copy_file_range(fin, fout, 50) == 50
        assert os.lseek(fin, 0, os.SEEK_CUR) == 60
        assert os.copy_file_range(fin, fout, 100, len(src)) == 0  # at EOF
        # within one file, ranges apart
        frw = os.open(m / "src", os.O_RDWR)
        try:
            assert os.copy_file_range(frw, frw, 1000, 0, len(src) + 5000) == 1000
        finally:
            os.close(frw)
        src = src + bytes(5000) + src[:1000]
        os.fdatasync(fout)
        os.fsync(fout)
        os.fsync(fin)
    finally:
        os.close(fin)
        os.close(fout)
    want = b"=" * 100 + src[4099 : 4099 + count] + src[10:60]
    assert same(fs, "dst") == want
    assert same(fs, "src") == src


def test_mmap_and_direct_io(fs):
    """mmap reads; MAP_SHARED writes reach the backing after msync; O_DIRECT with aligned buffers."""
    m, b = fs.mnt, fs.backing
    page = mmap.PAGESIZE
    data = bytearray(os.urandom(3 * page + 100))
    (m / "map").write_bytes(data)
    with open(m / "map", "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            assert mm[:] == data
            mm[page - 5 : page + 5] = b"X" * 10
            mm[-1:] = b"!"
            data[page - 5 : page + 5] = b"X" * 10
            data[-1:] = b"!"
            mm.flush()
            assert (b / "map").read_bytes() == data  # written back at msync
            mm[0:4] = b"LAST"
            data[0:4] = b"LAST"
        finally:
            mm.close()
    assert same(fs, "map") == data  # and at close
    with open(m / "map", "rb") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as ro:
        assert ro[:] == data and ro.find(b"LAST") == 0

    # Writeback through a file opened O_RDWR | O_APPEND still lands where the page is.
    fd = os.open(m / "map", os.O_RDWR | os.O_APPEND)
    try:
        with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            mm[10:20] = b"appendfd!!"
            data[10:20] = b"appendfd!!"
            mm.flush()
        assert (b / "map").read_bytes() == data
    finally:
        os.close(fd)
    assert same(fs, "map") == data

    size = 16 * page
    out = mmap.mmap(-1, size)  # page aligned, as O_DIRECT wants
    out.write(os.urandom(size))
    fd = os.open(m / "direct", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.pwritev(fd, [out], 0) == size
        assert os.pwritev(fd, [memoryview(out)[:page]], size + page) == page  # leaves a hole
        back = mmap.mmap(-1, size)
        assert os.preadv(fd, [back], 0) == size
        assert back[:] == out[:]
        assert os.preadv(fd, [memoryview(back)[: 2 * page]], size) == 2 * page
        assert back[: 2 * page] == bytes(page) + out[:page]
        assert os.preadv(fd, [back], size + 2 * page) == 0
        back.close()
    finally:
        os.close(fd)
    assert same(fs, "direct") == out[:] + bytes(page) + out[:page]
    out.close()
