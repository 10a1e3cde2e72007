"""Directories through the mount: mkdir/rmdir, big listings, telldir/seekdir, odd names.

Every case runs on fastpass and on a bind mount (the kernel's own answer);
listings are compared entry by entry, in order, with the backing's own.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from tests.conftest import err

libc = ctypes.CDLL(None, use_errno=True)


class Dirent(ctypes.Structure):
    """glibc's struct dirent on x86_64."""

    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]  # fmt: skip


libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.readdir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.telldir.argtypes = [ctypes.c_void_p]
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.rewinddir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]


class DirStream:
    """opendir(3)/readdir(3)/telldir(3)/seekdir(3) as glibc does them."""

    def __init__(self, path: Path):
        self.d = libc.opendir(os.fsencode(path))
        if not self.d:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), str(path))

    def next(self) -> tuple[bytes, int, int] | None:
        """(name, d_type, d_ino) of the next entry, None at the end."""
        ctypes.set_errno(0)
        p = libc.readdir(self.d)
        if not p:
            assert ctypes.get_errno() == 0, os.strerror(ctypes.get_errno())
            return None
        return p.contents.d_name, p.contents.d_type, p.contents.d_ino

    def read(self, n: int = -1) -> list[tuple[bytes, int, int]]:
        out = []
        while n < 0 or len(out) < n:
            e = self.next()
            if e is None:
                break
            out.append(e)
        return out

    def tell(self) -> int:
        return libc.telldir(self.d)

    def seek(self, pos: int) -> None:
        libc.seekdir(self.d, pos)

    def rewind(self) -> None:
        libc.rewinddir(self.d)

    def close(self) -> None:
        libc.closedir(self.d)


def test_mkdir_rmdir_nested(fs):
    """mkdir modes and errors, rmdir (ENOTEMPTY), link counts, setgid inheritance, deep nesting, fsync on a dir."""
    m, b = fs.mnt, fs.backing
    old = os.umask(0)
    try:
        for mode in (0o755, 0o700, 0o000, 0o1777, 0o2775, 0o7777):
            os.mkdir(m / f"d{mode:o}", mode)
            os.mkdir(b / f"ref{mode:o}", mode)
            want = os.stat(b / f"ref{mode:o}").st_mode
            assert os.stat(m / f"d{mode:o}").st_mode == os.stat(b / f"d{mode:o}").st_mode == want
    finally:
        os.umask(old)
    for mode in (0o755, 0o700, 0o000, 0o1777, 0o2775, 0o7777):
        os.rmdir(b / f"ref{mode:o}")

    (m / "p").mkdir()
    for i in range(3):
        (m / "p" / f"sub{i}").mkdir()
    (m / "p" / "file").write_bytes(b"")
    assert os.stat(m / "p").st_nlink == os.stat(b / "p").st_nlink == 5
    cases = [
        (os.mkdir, m / "p", errno.EEXIST),
        (os.rmdir, m / "p", errno.ENOTEMPTY),
        (os.rmdir, m / "p" / "nope", errno.ENOENT),
        (os.rmdir, m / "p" / "file", errno.ENOTDIR),
        (os.rmdir, f"{m}/p/sub0/.", errno.EINVAL),
        (os.mkdir, m / "p" / "nope" / "x", errno.ENOENT),
    ]
    assert [err(fn, path) for fn, path, _ in cases] == [e for _, _, e in cases]
    os.rmdir(m / "p" / "sub1")
    assert sorted(os.listdir(b / "p")) == ["file", "sub0", "sub2"]
    assert os.stat(m / "p").st_nlink == os.stat(b / "p").st_nlink == 4

    # A setgid directory hands its group and its setgid bit down.
    os.mkdir(m / "g", 0o755)
    os.chown(m / "g", -1, 4321)
    os.chmod(m / "g", 0o2775)
    os.mkdir(m / "g" / "child", 0o755)
    (m / "g" / "f").write_bytes(b"")
    for p in ("g/child", "g/f"):
        assert os.stat(m / p).st_gid == os.stat(b / p).st_gid == 4321, p
    assert os.stat(m / "g" / "child").st_mode & stat.S_ISGID and os.stat(b / "g" / "child").st_mode & stat.S_ISGID

    # 64 levels deep, a file at the bottom, then removed bottom-up.
    parts = [f"level{i:02d}" for i in range(64)]
    deep = m.joinpath(*parts)
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"deep")
    assert b.joinpath(*parts, "bottom").read_bytes() == b"deep"
    walk_m = [(Path(d).relative_to(m), sorted(ds), sorted(fs_)) for d, ds, fs_ in os.walk(m / "level00")]
    walk_b = [(Path(d).relative_to(b), sorted(ds), sorted(fs_)) for d, ds, fs_ in os.walk(b / "level00")]
    assert walk_m == walk_b and len(walk_m) == 64

    for fsync in (os.fsync, os.fdatasync):
        fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fsync(fd)
        finally:
            os.close(fd)

    os.unlink(deep / "bottom")
    for i in range(64, 0, -1):
        os.rmdir(m.joinpath(*parts[:i]))
    assert not (b / "level00").exists()


def _populate(d: Path, n: int) -> None:
    """n entries of mixed types, straight in the backing (nothing is cached yet)."""
    d.mkdir()
    for i in range(n):
        p = d / f"entry-{i:05d}-{'x' * (i % 40)}"
        if i % 10 == 3:
            p.mkdir()
        elif i % 17 == 5:
            p.symlink_to(f"target-{i}")
        elif i % 101 == 7:
            os.mkfifo(p)
        else:
            p.write_bytes(b"")


def test_big_listing(fs):
    """5000 entries: os.listdir, os.scandir and readdir(3) (names, order, d_type, d_ino) match the backing."""
    _populate(fs.backing / "big", 5000)
    m, b = fs.mnt / "big", fs.backing / "big"

    names = os.listdir(b)
    assert len(names) == 5000
    assert os.listdir(m) == names  # same order: the backing's own
    assert os.listdir(os.fsencode(m)) == [os.fsencode(n) for n in names]

    def scan(d: Path) -> list[tuple]:
        with os.scandir(d) as it:
            return [(e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False), e.is_symlink(),
                     e.inode()) for e in it]  # fmt: skip

    sm = scan(m)
    assert sm == scan(b)
    assert sum(1 for e in sm if e[1]) == 500 and sum(1 for e in sm if e[3]) > 200

    # readdir(3): every entry with its d_type and d_ino, "." and ".." included.
    ref = DirStream(b).read()
    kinds = {t for _, t, _ in ref}
    assert kinds == {4, 8, 10, 1}  # DT_DIR, DT_REG, DT_LNK, DT_FIFO: the backing fills d_type
    s1, s2 = DirStream(m), DirStream(m)
    try:
        assert s1.read() == ref
        # Two streams on one directory, read in alternation, each see the whole listing.
        got = []
        while (e := s2.next()) is not None:
            got.append(e)
            if len(got) % 100 == 0:
                s1.rewind()
                s1.read(7)
        assert got == ref
        s1.rewind()
        assert s1.read() == ref  # and again: nothing is created in between
    finally:
        s1.close()
        s2.close()


def test_seekdir_telldir(fs):
    """telldir positions stay valid: seekdir back to one returns the same names that followed it."""
    _populate(fs.backing / "dir", 3000)
    m = fs.mnt / "dir"
    ref = DirStream(fs.backing / "dir").read()
    s = DirStream(m)
    try:
        start = s.tell()
        half = s.read(len(ref) // 2)
        mid = s.tell()
        rest = s.read()
        assert half + rest == ref
        s.seek(mid)
        assert s.read() == rest  # back to the middle: the same names follow
        s.seek(start)
        assert s.read(5) == ref[:5]
        # A position after each of a few entries, then visited out of order.
        s.rewind()
        marks = {}
        for i in range(len(ref)):
            assert s.next() == ref[i]
            if i % 397 == 0 or i in (1, len(ref) - 2):
                marks[i] = s.tell()
        for i in sorted(marks, reverse=True) + sorted(marks):
            s.seek(marks[i])
            assert s.read(3) == ref[i + 1 : i + 4], i
        s.seek(marks[len(ref) - 2])
        assert s.read() == ref[-1:] and s.next() is None
        # Positions are the directory's, not the stream's: a fresh stream accepts them too.
        other = DirStream(m)
        try:
            for i in sorted(marks, reverse=True):
                other.seek(marks[i])
                assert other.read(2) == ref[i + 1 : i + 3], i
        finally:
            other.close()
        s.rewind()
        assert s.read() == ref
    finally:
        s.close()


NAMES = [
    b"with space", b" lead and trail ", b"tab\tand\nnewline", b"\xff\xfe\xfd not utf-8", "ünïcødé ✓".encode(),
    b".hidden", b"...", b"-dash", b"back\\slash", b"*?[glob]", b"a" * 255, "é".encode() * 127 + b"x",
    b"\x01\x7f ctrl",
]  # fmt: skip


def test_odd_names(fs):
    """Names with spaces, control and non-UTF-8 bytes, 255 bytes; 256 bytes is ENAMETOOLONG everywhere."""
    m, b = os.fsencode(fs.mnt), os.fsencode(fs.backing)
    for name in NAMES:
        assert len(name) <= 255
        with open(os.path.join(m, name), "xb") as f:
            f.write(name)
        os.mkdir(os.path.join(m, b"d" + name[:254]))
        with open(os.path.join(m, b"d" + name[:254], name), "wb") as f:
            f.write(b"inner")
    want = sorted(NAMES + [b"d" + n[:254] for n in NAMES])
    assert sorted(os.listdir(m)) == sorted(os.listdir(b)) == want
    with os.scandir(m) as it:
        assert sorted(e.name for e in it) == want
    for name in NAMES:
        with open(os.path.join(b, name), "rb") as f:
            assert f.read() == name
        assert os.stat(os.path.join(m, name)).st_ino == os.stat(os.path.join(b, name)).st_ino
        assert os.listdir(os.path.join(m, b"d" + name[:254])) == [name]
        with open(os.path.join(b, b"d" + name[:254], name), "rb") as f:
            assert f.read() == b"inner"

    # Renames between odd names.
    os.rename(os.path.join(m, NAMES[3]), os.path.join(m, NAMES[3] + b".moved"))
    assert os.path.exists(os.path.join(b, NAMES[3] + b".moved")) and not os.path.exists(os.path.join(b, NAMES[3]))

    long = b"n" * 256
    target = os.path.join(m, long)
    cases = [
        ("open", lambda: os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)),
        ("stat", lambda: os.stat(target)),
        ("mkdir", lambda: os.mkdir(target)),
        ("symlink", lambda: os.symlink(b"x", target)),
        ("mknod", lambda: os.mkfifo(target)),
        ("rename", lambda: os.rename(os.path.join(m, b"..."), target)),
        ("link", lambda: os.link(os.path.join(m, b"..."), target)),
        ("unlink", lambda: os.unlink(target)),
        ("xattr", lambda: os.getxattr(target, "user.x")),
    ]
    got = {what: errno.errorcode.get(err(fn), "OK") for what, fn in cases}
    assert got == {what: "ENAMETOOLONG" for what, _ in cases}
    assert sorted(os.listdir(b)) == sorted(os.listdir(m)) and len(os.listdir(b)) == len(want)  # nothing made
