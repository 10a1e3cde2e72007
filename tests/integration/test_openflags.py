"""Every open flag the kernel can pass in OPEN, CREATE and TMPFILE, on every configuration,
against the bind mount (fastpass.fs.openflags says what fastpass does with each).

Each case opens through the mount with one flag, then writes, syncs and reads the file in
many separate requests, so that with several workers serving in userspace the fh is used by
workers that did not open it (their own reopen of the inode), and compares everything the
application saw (data, sizes, errnos) with the same steps on a bind mount.  The reproducers
of issue 14: an fh opened with O_NOFOLLOW was answered ELOOP by every worker that reopened
it (rsync's temp files, SQLite's database), and OPEN with O_NOFOLLOW itself.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ENGINES, Mounted, bind_mount, fastpass_mount

# Every configuration of the `fs` fixture, plus four workers serving data in userspace, where
# READ and WRITE reach workers that did not open the fh.
CONFIGS = {**ENGINES, "native-4-userspace": ("--workers", "4", "--passthrough", "off")}
BLOCK = 4096
ROUNDS = 12  # requests per step: with four workers, most reach a worker other than the opener


@pytest.fixture(params=[*CONFIGS, "bind"])
def mount(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mounted]:
    cm = bind_mount(tmp_path) if request.param == "bind" else fastpass_mount(tmp_path, *CONFIGS[request.param])
    with cm as m:
        yield m


def _outcome(fn, *args):
    """What an application sees of a call: its result, or the errno name it failed with."""
    try:
        return fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)


def _aligned(data: bytes) -> mmap.mmap:
    """A page-aligned buffer holding `data` (O_DIRECT needs one)."""
    buf = mmap.mmap(-1, max(len(data), BLOCK))
    buf[: len(data)] = data
    return buf


def _exercise(fd: int) -> list:
    """Writes, syncs and reads in many requests; every result, as the application sees it."""
    seen = []
    for i in range(ROUNDS):
        buf = _aligned(bytes([65 + i]) * BLOCK)
        seen.append(_outcome(os.pwritev, fd, [buf], i * BLOCK))
        seen.append(_outcome(os.fdatasync if i % 2 else os.fsync, fd))
    for i in range(ROUNDS):
        buf = _aligned(b"")
        n = _outcome(os.preadv, fd, [buf], i * BLOCK)
        seen.append((n, bytes(buf[:n]) if isinstance(n, int) else None))
    seen.append(_outcome(lambda: os.fstat(fd).st_size))
    seen.append(_outcome(os.ftruncate, fd, BLOCK))
    seen.append(_outcome(lambda: os.fstat(fd).st_size))
    return seen


def _run(path: Path, flags: int, mode: int = 0o644) -> list:
    """open(path, flags), the exercise when it opened, close; then the file as it is left."""
    fd = _outcome(os.open, path, flags, mode)
    if not isinstance(fd, int):
        return [fd]
    try:
        seen = [_exercise(fd)] if flags & os.O_ACCMODE == os.O_RDWR else [_outcome(os.read, fd, 64)]
    finally:
        seen.append(_outcome(os.close, fd))
    seen.append(_outcome(path.read_bytes))
    return seen


RW = os.O_RDWR
# OPEN of an existing regular file: one case per flag the kernel passes on.
OPEN_FLAGS = {
    "plain": RW,
    "O_NOFOLLOW": RW | os.O_NOFOLLOW,
    "O_NONBLOCK": RW | os.O_NONBLOCK,
    "O_NOATIME": RW | os.O_NOATIME,
    "O_DIRECT": RW | os.O_DIRECT,
    "O_APPEND": RW | os.O_APPEND,
    "O_SYNC": RW | os.O_SYNC,
    "O_DSYNC": RW | os.O_DSYNC,
    "O_TRUNC": RW | os.O_TRUNC,
    "O_LARGEFILE": RW | os.O_LARGEFILE,
    "O_CLOEXEC": RW | os.O_CLOEXEC,
    "O_NOCTTY": RW | os.O_NOCTTY,
    "O_ASYNC": RW | os.O_ASYNC,
    "O_CREAT existing": RW | os.O_CREAT,
    "O_CREAT|O_EXCL existing": RW | os.O_CREAT | os.O_EXCL,
    "O_DIRECTORY on a file": RW | os.O_DIRECTORY,
    "O_RDONLY|O_NOFOLLOW|O_NONBLOCK": os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,  # rsync's source reads
    "everything": RW | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOATIME | os.O_DIRECT | os.O_DSYNC | os.O_CLOEXEC,
}


def _steps(mnt: Path, flags: int, existing: bool) -> list:
    """Open `f` (made first when `existing`) with `flags`, exercise it; all seen, and its mode."""
    path = mnt / "f"
    if existing:
        path.write_bytes(b"old contents\n")
    seen = _run(path, flags, 0o600)
    seen.append(oct(os.stat(path).st_mode))
    return seen


def _reference(flags: int, existing: bool) -> list:
    """The same steps in a directory of the backing's kind (ext4 under /var/tmp), no mount
    between: the kernel's own answer, which the bind mount of every run must give too."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        return _steps(Path(d), flags, existing)


@pytest.mark.parametrize("name", list(OPEN_FLAGS))
def test_open_flag(mount: Mounted, name: str):
    assert _steps(mount.mnt, OPEN_FLAGS[name], True) == _reference(OPEN_FLAGS[name], True)


# CREATE: a new name, with the flags that shape the create.
CREATE_FLAGS = {
    "O_CREAT": RW | os.O_CREAT,
    "O_CREAT|O_EXCL": RW | os.O_CREAT | os.O_EXCL,
    "O_CREAT|O_TRUNC": RW | os.O_CREAT | os.O_TRUNC,
    "O_CREAT|O_NOFOLLOW": RW | os.O_CREAT | os.O_NOFOLLOW,  # SQLite's database and journals
    "O_CREAT|O_EXCL|O_NOFOLLOW": RW | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,  # rsync's temp files
    "O_CREAT|O_DIRECT": RW | os.O_CREAT | os.O_DIRECT,
    "O_CREAT|O_APPEND": RW | os.O_CREAT | os.O_APPEND,
    "O_CREAT|O_SYNC": RW | os.O_CREAT | os.O_SYNC,
    "O_CREAT|O_NOATIME|O_CLOEXEC|O_LARGEFILE": RW | os.O_CREAT | os.O_NOATIME | os.O_CLOEXEC | os.O_LARGEFILE,
    "O_CREAT|O_NONBLOCK": RW | os.O_CREAT | os.O_NONBLOCK,
    "O_CREAT|O_WRONLY": os.O_WRONLY | os.O_CREAT,
}


@pytest.mark.parametrize("name", list(CREATE_FLAGS))
def test_create_flag(mount: Mounted, name: str):
    assert _steps(mount.mnt, CREATE_FLAGS[name], False) == _reference(CREATE_FLAGS[name], False)


def test_nofollow_on_a_symlink_is_eloop(mount: Mounted):
    (mount.mnt / "target").write_bytes(b"old contents\n")
    (mount.mnt / "link").symlink_to("target")
    for flags in (os.O_RDONLY | os.O_NOFOLLOW, os.O_RDWR | os.O_NOFOLLOW | os.O_CREAT):
        with pytest.raises(OSError) as e:
            os.open(mount.mnt / "link", flags)
        assert e.value.errno == errno.ELOOP
    # Without O_NOFOLLOW the link is followed by the kernel, and the target opens.
    fd = os.open(mount.mnt / "link", os.O_RDONLY)
    try:
        assert os.read(fd, 64) == b"old contents\n"
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
AT_SYMLINK_FOLLOW = 0x400
AT_FDCWD = -100


@pytest.mark.parametrize("extra", [0, os.O_EXCL, os.O_DIRECT, os.O_SYNC], ids=["plain", "O_EXCL", "O_DIRECT", "O_SYNC"])
def test_tmpfile_flags(mount: Mounted, extra: int):
    """O_TMPFILE, written across requests, then given a name with linkat (refused with O_EXCL)."""
    if mount.engine == "pyfuse3":  # libfuse through pyfuse3 has no TMPFILE operation (docs/io.md: Engines)
        assert _outcome(os.open, mount.mnt, os.O_TMPFILE | os.O_RDWR | extra, 0o640) == errno.errorcode[errno.EOPNOTSUPP]
        return
    fd = os.open(mount.mnt, os.O_TMPFILE | os.O_RDWR | extra, 0o640)
    try:
        seen = _exercise(fd)
        rc = _libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, os.fsencode(mount.mnt / "named"),
                          AT_SYMLINK_FOLLOW)  # fmt: skip
        linked = rc == 0 or errno.errorcode[ctypes.get_errno()]
    finally:
        os.close(fd)
    named = _outcome((mount.mnt / "named").read_bytes)
    assert linked == (errno.errorcode[errno.ENOENT] if extra == os.O_EXCL else True)
    expected = [b"A" * BLOCK] if extra != os.O_EXCL else ["ENOENT"]
    assert [named[:BLOCK] if isinstance(named, bytes) else named] == expected
    assert seen[-1] == BLOCK and seen[-3] == ROUNDS * BLOCK
    assert all(r is None for r in seen[1 : 2 * ROUNDS : 2])  # every fsync/fdatasync succeeded
