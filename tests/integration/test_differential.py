"""Differential testing: random operation sequences through fastpass versus a plain directory.

A hypothesis state machine applies each step to one or more fastpass mounts
(the native engine, and in one run the native and pyfuse3 engines side by
side) and to a reference directory on the same filesystem, and requires the
same result (or the same errno) from each.  After every step the pool of
names is compared through every mount (so a stale kernel cache shows up
too), and at the end of each example each whole tree is compared with the
reference, through the mount and in its backing dir (names, types, sizes,
modes, contents, symlink targets, xattrs, link counts).

The mount is made once per test function; the trees are emptied (through the
mount) at the start of each example.  All paths are relative and symlink
targets never leave the tree, so both roots see the same namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import fastpass_mount
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# Few names, so operations collide: files, directories and symlinks under the same names.
# Each example starts with the directories a, b, a/b and a random mix of the rest.
SKELETON = ["a", "b", "a/b"]
LEAVES = ["f", "g", "a/f", "a/g", "b/f", "a/b/f", "a/b/g"]
PATHS = SKELETON + LEAVES
TARGETS = ["f", "g", "a", "b/f", "missing", "."]  # relative, never leaving the tree
XATTRS = ["user.one", "user.two"]

paths = st.sampled_from(PATHS)
modes = st.integers(0, 0o7777)
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o000, 0o4755, 0o2644, 0o1777])
data = st.binary(min_size=0, max_size=3000)
offsets = st.one_of(st.integers(0, 9000), st.sampled_from([4095, 4096, 65535, 65536, 131072, 1 << 20]))
sizes = st.one_of(st.integers(0, 9000), st.sampled_from([0, 4096, 65536, 200000]))


# --- what a step returns, comparable across the two roots --------------------------------
def outcome(fn: Callable[..., Any], root: str, *args: Any) -> tuple:
    try:
        return ("ok", fn(root, *args))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def summary(st_: os.stat_result) -> tuple:
    kind = stat.S_IFMT(st_.st_mode)
    size = None if stat.S_ISDIR(kind) else st_.st_size  # a directory's size is the filesystem's business
    return (stat.filemode(st_.st_mode), stat.S_IMODE(st_.st_mode), size, st_.st_nlink)


def j(root: str, path: str) -> str:
    return os.path.join(root, path)


# --- the operations -----------------------------------------------------------------
# Every open is O_NONBLOCK: a step may meet a FIFO, whose blocking open would wait forever.
NB = os.O_NONBLOCK


def op_create(root: str, path: str, mode: int, excl: bool, trunc: bool) -> None:
    flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if excl else 0) | (os.O_TRUNC if trunc else 0)
    os.close(os.open(j(root, path), flags | NB, mode))


def op_put(root: str, path: str, payload: bytes, mode: int) -> int:
    fd = os.open(j(root, path), os.O_CREAT | os.O_WRONLY | os.O_TRUNC | NB, mode)
    try:
        return os.write(fd, payload)
    finally:
        os.close(fd)


def op_write(root: str, path: str, offset: int, payload: bytes, append: bool, trunc: bool) -> int:
    flags = os.O_WRONLY | (os.O_APPEND if append else 0) | (os.O_TRUNC if trunc else 0)
    fd = os.open(j(root, path), flags | NB)
    try:
        return os.pwrite(fd, payload, offset)
    finally:
        os.close(fd)


def op_write_rw_readback(root: str, path: str, offset: int, payload: bytes) -> tuple[int, bytes, int]:
    """Write then read the same range and fstat on one O_RDWR descriptor."""
    fd = os.open(j(root, path), os.O_RDWR | NB)
    try:
        n = os.pwrite(fd, payload, offset)
        return n, os.pread(fd, len(payload) + 10, offset), os.fstat(fd).st_size
    finally:
        os.close(fd)


def op_read(root: str, path: str) -> bytes:
    fd = os.open(j(root, path), os.O_RDONLY | NB)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def op_truncate(root: str, path: str, size: int) -> None:
    os.truncate(j(root, path), size)


def op_ftruncate(root: str, path: str, size: int) -> int:
    fd = os.open(j(root, path), os.O_RDWR | NB)
    try:
        os.ftruncate(fd, size)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def op_rename(root: str, src: str, dst: str) -> None:
    os.rename(j(root, src), j(root, dst))


def op_rename2(root: str, src: str, dst: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(j(root, src)), AT_FDCWD, os.fsencode(j(root, dst)), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def op_mkfifo(root: str, path: str, mode: int) -> None:
    os.mkfifo(j(root, path), mode)


def op_link(root: str, src: str, dst: str, follow: bool) -> None:
    os.link(j(root, src), j(root, dst), follow_symlinks=follow)


def op_unlink(root: str, path: str) -> None:
    os.unlink(j(root, path))


def op_mkdir(root: str, path: str, mode: int) -> None:
    os.mkdir(j(root, path), mode)


def op_rmdir(root: str, path: str) -> None:
    os.rmdir(j(root, path))


def op_chmod(root: str, path: str, mode: int) -> None:
    os.chmod(j(root, path), mode)


def op_symlink(root: str, target: str, path: str) -> None:
    os.symlink(target, j(root, path))


def op_readlink(root: str, path: str) -> str:
    return os.readlink(j(root, path))


def op_setxattr(root: str, path: str, name: str, value: bytes, flags: int, follow: bool) -> None:
    os.setxattr(j(root, path), name, value, flags, follow_symlinks=follow)


def op_removexattr(root: str, path: str, name: str, follow: bool) -> None:
    os.removexattr(j(root, path), name, follow_symlinks=follow)


def op_getxattr(root: str, path: str, name: str, follow: bool) -> bytes:
    return os.getxattr(j(root, path), name, follow_symlinks=follow)


def op_listxattr(root: str, path: str, follow: bool) -> list[str]:
    return sorted(os.listxattr(j(root, path), follow_symlinks=follow))


def op_listdir(root: str, path: str) -> list[str]:
    return sorted(os.listdir(j(root, path)))


def op_stat(root: str, path: str, follow: bool) -> tuple:
    return summary(os.stat(j(root, path), follow_symlinks=follow))


# --- on descriptors held across steps -----------------------------------------------------
HOLD_FLAGS = [os.O_RDWR, os.O_RDWR, os.O_RDONLY, os.O_WRONLY, os.O_RDWR | os.O_APPEND, os.O_WRONLY | os.O_TRUNC,
              os.O_RDONLY | os.O_DIRECTORY]  # fmt: skip
MAX_HELD = 4


def fd_pwrite(fd: int, offset: int, payload: bytes) -> int:
    return os.pwrite(fd, payload, offset)


def fd_pread(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


def fd_fstat(fd: int) -> tuple:
    return summary(os.fstat(fd))


def fd_ftruncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def fd_fchmod(fd: int, mode: int) -> None:
    os.fchmod(fd, mode)


def fd_fsync(fd: int) -> None:
    os.fsync(fd)


def fd_fsetxattr(fd: int, name: str, value: bytes) -> None:
    os.setxattr(fd, name, value)


def fd_flistxattr(fd: int) -> list[str]:
    return sorted(os.listxattr(fd))


def fd_listdir(fd: int) -> list[str]:
    os.lseek(fd, 0, os.SEEK_SET)
    return sorted(os.listdir(fd))


def fd_outcome(fn: Callable[..., Any], fd: int, *args: Any) -> tuple:
    try:
        return ("ok", fn(fd, *args))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


# --- whole trees ---------------------------------------------------------------------
def snapshot(root: str) -> dict[str, tuple]:
    tree: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into symlinks
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st_ = os.lstat(p)
            if stat.S_ISREG(st_.st_mode):
                with open(p, "rb") as f:
                    content: object = f.read()
            elif stat.S_ISLNK(st_.st_mode):
                content = os.readlink(p)
            else:
                content = None
            xattrs = {n: os.getxattr(p, n, follow_symlinks=False) for n in os.listxattr(p, follow_symlinks=False)}
            tree[rel] = (summary(st_), content, sorted(xattrs.items()))
    return tree


def empty(root: str) -> None:
    for name in os.listdir(root):
        p = os.path.join(root, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def hardlink_groups(root: str) -> list[frozenset[str]]:
    """Which names share an inode (compared as sets of names, not inode numbers)."""
    by_ino: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            by_ino.setdefault(os.lstat(p).st_ino, set()).add(os.path.relpath(p, root))
    return sorted(frozenset(g) for g in by_ino.values())


# --- the machine ---------------------------------------------------------------------
class Differential(RuleBasedStateMachine):
    mounts: tuple[tuple[str, str, str], ...] = ()  # set by the test: (label, mountpoint, backing) of each mount
    ref = ""  # the plain reference directory

    def __init__(self) -> None:
        super().__init__()
        for _label, mnt, backing in self.mounts:
            empty(mnt)  # through the mount, so the kernel's caches see it
            assert os.listdir(backing) == []
        empty(self.ref)
        self.steps = 0
        # (an fd through each mount, the fd in the reference, path, flags)
        self.held: list[tuple[list[int], int, str, int]] = []

    def both(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Apply a step to every mount and to the reference: the same result or errno from each."""
        self.steps += 1
        want = outcome(fn, self.ref, *args)
        for label, mnt, _ in self.mounts:
            got = outcome(fn, mnt, *args)
            assert got == want, f"{fn.__name__}{args!r}: {label} gave {got!r}, the plain directory {want!r}"
        return want

    @initialize(kinds=st.lists(st.sampled_from(["file", "file", "file", "dir", "symlink", "none"]),
                               min_size=len(LEAVES), max_size=len(LEAVES)),
                payloads=st.lists(data, min_size=len(LEAVES), max_size=len(LEAVES)),
                dests=st.lists(st.sampled_from(TARGETS), min_size=len(LEAVES), max_size=len(LEAVES)),
                xattr=st.booleans())  # fmt: skip
    def populate(self, kinds, payloads, dests, xattr):
        """Start from a small random tree, so that most steps find something to act on."""
        for path in SKELETON:
            self.both(op_mkdir, path, 0o755)
        for path, kind, payload, dest in zip(LEAVES, kinds, payloads, dests):
            if kind == "file":
                self.both(op_put, path, payload, 0o644)
                if xattr:
                    self.both(op_setxattr, path, XATTRS[0], payload[:50], 0, False)
            elif kind == "dir":
                self.both(op_mkdir, path, 0o755)
            elif kind == "symlink":
                self.both(op_symlink, dest, path)

    @rule(path=paths, payload=data, mode=file_modes)
    def put(self, path, payload, mode):
        self.both(op_put, path, payload, mode)

    @rule(path=paths, mode=file_modes, excl=st.booleans(), trunc=st.booleans())
    def create(self, path, mode, excl, trunc):
        self.both(op_create, path, mode, excl, trunc)

    @rule(path=paths, offset=offsets, payload=data, append=st.booleans(), trunc=st.booleans())
    def write(self, path, offset, payload, append, trunc):
        self.both(op_write, path, offset, payload, append, trunc)

    @rule(path=paths, offset=offsets, payload=data)
    def write_readback(self, path, offset, payload):
        self.both(op_write_rw_readback, path, offset, payload)

    @rule(path=paths)
    def read(self, path):
        self.both(op_read, path)

    @rule(path=paths, size=sizes)
    def truncate(self, path, size):
        self.both(op_truncate, path, size)

    @rule(path=paths, size=sizes)
    def ftruncate(self, path, size):
        self.both(op_ftruncate, path, size)

    @rule(src=paths, dst=paths)
    def rename(self, src, dst):
        self.both(op_rename, src, dst)

    @rule(src=paths, dst=paths, flags=st.sampled_from([RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename2(self, src, dst, flags):
        self.both(op_rename2, src, dst, flags)

    @rule(path=paths, mode=st.sampled_from([0o644, 0o600]))
    def mkfifo(self, path, mode):
        self.both(op_mkfifo, path, mode)

    @rule(src=paths, dst=paths, follow=st.booleans())
    def link(self, src, dst, follow):
        self.both(op_link, src, dst, follow)

    @rule(path=paths)
    def unlink(self, path):
        self.both(op_unlink, path)

    @rule(path=paths, mode=st.sampled_from([0o755, 0o700, 0o555, 0o1777, 0o2755]))
    def mkdir(self, path, mode):
        self.both(op_mkdir, path, mode)

    @rule(path=paths)
    def rmdir(self, path):
        self.both(op_rmdir, path)

    @rule(path=paths, mode=modes)
    def chmod(self, path, mode):
        self.both(op_chmod, path, mode)

    @rule(dest=st.sampled_from(TARGETS), path=paths)
    def symlink(self, dest, path):
        self.both(op_symlink, dest, path)

    @rule(path=paths)
    def readlink(self, path):
        self.both(op_readlink, path)

    @rule(path=paths, name=st.sampled_from(XATTRS), value=st.binary(max_size=200),
          flags=st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE]), follow=st.booleans())  # fmt: skip
    def setxattr(self, path, name, value, flags, follow):
        self.both(op_setxattr, path, name, value, flags, follow)

    @rule(path=paths, name=st.sampled_from(XATTRS), follow=st.booleans())
    def removexattr(self, path, name, follow):
        self.both(op_removexattr, path, name, follow)

    @rule(path=paths, name=st.sampled_from(XATTRS), follow=st.booleans())
    def getxattr(self, path, name, follow):
        self.both(op_getxattr, path, name, follow)

    @rule(path=paths, follow=st.booleans())
    def listxattr(self, path, follow):
        self.both(op_listxattr, path, follow)

    @rule(path=st.sampled_from(["a", "b", "a/b", "f"]))
    def listdir(self, path):
        self.both(op_listdir, path)

    # -- descriptors kept open across steps (through unlink, rename, truncate by name...) --
    @precondition(lambda self: len(self.held) < MAX_HELD)
    @rule(path=paths, flags=st.sampled_from(HOLD_FLAGS))
    def hold(self, path, flags):
        self.steps += 1
        fds = []
        for root in (*(mnt for _, mnt, _ in self.mounts), self.ref):
            try:
                fds.append(("ok", os.open(j(root, path), flags | os.O_NONBLOCK)))  # a fifo must not block
            except OSError as e:
                fds.append(("err", errno.errorcode.get(e.errno, e.errno)))
        if all(kind == "ok" for kind, _ in fds):
            self.held.append(([fd for _, fd in fds[:-1]], fds[-1][1], path, flags))
            return
        for kind, fd in fds:
            if kind == "ok":
                os.close(fd)
        want = fds[-1]
        for (label, _, _), got in zip(self.mounts, fds):
            assert got == want or (got[0] == want[0] == "err" and got[1] == want[1]), (
                f"open({path!r}, {flags:#o}): {label} {got!r}, plain {want!r}"
            )

    def both_fd(self, index: int, fn: Callable[..., Any], *args: Any) -> None:
        self.steps += 1
        got_fds, want_fd, path, flags = self.held[index % len(self.held)]
        want = fd_outcome(fn, want_fd, *args)
        for (label, _, _), got_fd in zip(self.mounts, got_fds):
            got = fd_outcome(fn, got_fd, *args)
            assert got == want, (f"{fn.__name__}{args!r} on a descriptor of {path!r} opened {flags:#o}: "
                                 f"{label} {got!r}, plain {want!r}")  # fmt: skip

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1), offset=offsets, payload=data)
    def held_pwrite(self, index, offset, payload):
        self.both_fd(index, fd_pwrite, offset, payload)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1), offset=offsets, size=st.integers(0, 70000))
    def held_pread(self, index, offset, size):
        self.both_fd(index, fd_pread, offset, size)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1))
    def held_fstat(self, index):
        self.both_fd(index, fd_fstat)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1), size=sizes)
    def held_ftruncate(self, index, size):
        self.both_fd(index, fd_ftruncate, size)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1), mode=file_modes)
    def held_fchmod(self, index, mode):
        self.both_fd(index, fd_fchmod, mode)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1))
    def held_fsync(self, index):
        self.both_fd(index, fd_fsync)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1), name=st.sampled_from(XATTRS), value=st.binary(max_size=50))
    def held_fsetxattr(self, index, name, value):
        self.both_fd(index, fd_fsetxattr, name, value)
        self.both_fd(index, fd_flistxattr)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1))
    def held_listdir(self, index):
        self.both_fd(index, fd_listdir)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, MAX_HELD - 1))
    def release(self, index):
        got_fds, want_fd, _path, _flags = self.held.pop(index % len(self.held))
        want = fd_outcome(os.close, want_fd)
        for (label, _, _), got_fd in zip(self.mounts, got_fds):
            got = fd_outcome(os.close, got_fd)
            assert got == want, f"close: {label} {got!r}, plain {want!r}"

    @invariant()
    def same_names(self):
        """Every name in the pool looks the same through each mount as in the reference."""
        for path in PATHS:
            want = outcome(op_stat, self.ref, path, False)
            for label, mnt, _ in self.mounts:
                got = outcome(op_stat, mnt, path, False)
                assert got == want, f"lstat {path!r} after {self.steps} steps: {label} {got!r}, plain {want!r}"
        for label, mnt, _ in self.mounts:
            assert outcome(op_listdir, mnt, ".") == outcome(op_listdir, self.ref, "."), label

    def teardown(self):
        while self.held:
            got_fds, want_fd, _path, _flags = self.held.pop()
            os.close(want_fd)
            for fd in got_fds:
                os.close(fd)
        want = snapshot(self.ref)
        groups = hardlink_groups(self.ref)
        for label, mnt, backing in self.mounts:
            for where, root in ((f"through {label}", mnt), (f"in {label}'s backing dir", backing)):
                got = snapshot(root)
                assert got == want, _diff(where, got, want)
                assert hardlink_groups(root) == groups, f"hard links differ {where}"


def _diff(where: str, got: dict, want: dict) -> str:
    lines = [f"final tree {where} differs from the plain directory:"]
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            lines.append(f"  {key}: got   {got.get(key)!r}\n  {' ' * len(key)}  plain {want.get(key)!r}")
    return "\n".join(lines)


CONFIGS = {  # the mounts each run compares with the plain directory: (label, mount options) each
    "w1": [("native w1", ("--workers", "1"))],
    "w4": [("native w4", ("--workers", "4"))],
    "w4-no-cache": [("native w4", ("--workers", "4", "--attr-timeout", "0", "--entry-timeout", "0"))],
    # the engines against each other and the plain directory, one sequence through all three
    "engines": [("native w4", ("--workers", "4")), ("pyfuse3", ("--engine", "pyfuse3"))],
}


@pytest.mark.timeout(400, method="thread")  # a hung FUSE request cannot be interrupted by a signal
@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_differential(tmp_path: Path, config: list[tuple[str, tuple[str, ...]]]):
    ref = tmp_path / "ref"
    ref.mkdir()
    with contextlib.ExitStack() as stack:
        mounts = []
        for i, (label, options) in enumerate(config):
            (tmp_path / str(i)).mkdir()
            m = stack.enter_context(fastpass_mount(tmp_path / str(i), *options))
            mounts.append((label, str(m.mnt), str(m.backing)))
        machine = type("DifferentialRun", (Differential,), {"mounts": tuple(mounts), "ref": str(ref)})
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=80,
                stateful_step_count=60,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )


@pytest.mark.parametrize("workers", ["1", "4"], ids=["w1", "w4"])
def test_rewinding_a_directory_descriptor(tmp_path: Path, workers: str):
    """Relisting one open directory from the start, again and again (rewinddir), as on a plain dir.

    With several workers each keeps its own backing fd per directory handle,
    and a READDIR at any offset may land on any of them.
    """
    ref = tmp_path / "ref"
    with fastpass_mount(tmp_path, "--workers", workers) as m:
        for root in (Path(m.mnt), ref):
            (root / "d").mkdir(parents=True)
            for name in ("f", "g", "h"):
                (root / "d" / name).write_bytes(b"x")
        fds = [os.open(root / "d", os.O_RDONLY | os.O_DIRECTORY) for root in (m.mnt, ref)]
        try:
            mismatches = []
            for i in range(200):
                got, want = (sorted(os.listdir(fd)) for fd in fds)  # listdir(fd) rewinds the fd afterwards
                if got != want:
                    mismatches.append((i, got))
                for fd in fds:
                    os.lseek(fd, 0, os.SEEK_SET)
            assert not mismatches, (
                f"{len(mismatches)} of 200 listings of a rewound directory fd differ from the plain "
                f"directory's {want}: first ones {mismatches[:3]}"
            )
        finally:
            for fd in fds:
                os.close(fd)
