"""Backing errors reach the caller as the backing's errno, and lose nothing."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from fastpass import state
from fastpass.kernel.abi import NOTIFY_PRUNE_MINOR
from tests.conftest import fastpass_mount, wait_for

_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def small_backing(tmp_path: Path):
    """A 1 MiB tmpfs as the backing directory."""
    backing = tmp_path / "backing"
    backing.mkdir()
    assert _libc.mount(b"tmpfs", os.fsencode(str(backing)), b"tmpfs", 0, b"size=1m") == 0
    try:
        yield backing
    finally:
        _libc.umount2(os.fsencode(str(backing)), 2)


def test_enospc_is_the_callers_errno_and_the_mount_lives(tmp_path: Path, small_backing: Path) -> None:
    with fastpass_mount(tmp_path, backing=small_backing) as m:
        keep = os.urandom(100_000)
        (m.mnt / "keep").write_bytes(keep)
        fd = os.open(m.mnt / "fill", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with pytest.raises(OSError) as info:
                for _ in range(64):
                    os.write(fd, b"x" * 65536)
                    os.fsync(fd)
            assert info.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        os.unlink(m.mnt / "fill")
        # The kernel releases a closed file asynchronously (and a worker lets go of an unlinked
        # inode at its next request or within a second), so the blocks come back soon, not at once.
        # Usually within 1.5 s; 3 s was once too short in a full suite run, so the bound is 10 s
        # (what it guards against is blocks that never come back).
        assert wait_for(lambda: os.statvfs(m.backing).f_bfree * os.statvfs(m.backing).f_frsize > 512 << 10, 10)
        assert (m.mnt / "keep").read_bytes() == keep == (m.backing / "keep").read_bytes()
        (m.mnt / "after").write_bytes(b"ok")
        assert (m.backing / "after").read_bytes() == b"ok"


def test_erofs_from_a_read_only_backing(tmp_path: Path, small_backing: Path) -> None:
    (small_backing / "f").write_bytes(b"data")
    assert _libc.mount(None, os.fsencode(str(small_backing)), None, 32 | 1, None) == 0  # MS_REMOUNT|MS_RDONLY
    with fastpass_mount(tmp_path, backing=small_backing) as m:
        assert (m.mnt / "f").read_bytes() == b"data"
        for attempt in (lambda: (m.mnt / "new").write_bytes(b"x"), lambda: os.chmod(m.mnt / "f", 0o600),
                        lambda: os.mkdir(m.mnt / "d"), lambda: os.unlink(m.mnt / "f")):  # fmt: skip
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS


def test_a_full_inode_table_is_enfile_while_its_inodes_are_in_use(tmp_path: Path) -> None:
    """At --max-inodes, with every inode held by an open file (nothing the kernel could forget),
    a create is ENFILE and leaves nothing behind; once the files are closed, fastpass has the
    kernel forget them (FUSE_NOTIFY_PRUNE) and creates succeed again, no drop_caches needed."""
    with fastpass_mount(tmp_path, "--max-inodes", "16", "--workers", "2") as m:
        made = []
        held = []
        try:
            with pytest.raises(OSError) as info:
                for i in range(64):
                    held.append((m.mnt / f"f{i}").open("wb"))
                    made.append(i)
            assert info.value.errno == errno.ENFILE
            assert 10 <= len(made) < 16
            for i in made:  # what was made before is intact
                assert (m.backing / f"f{i}").exists()
            assert sorted(os.listdir(m.backing)) == sorted(f"f{i}" for i in made)  # the refused one is not there
        finally:
            for f in held:
                f.close()

        def create() -> bool:
            try:
                (m.mnt / "after").write_bytes(b"y")
                return True
            except OSError as e:
                assert e.errno == errno.ENFILE
                return False

        record = state.read(str(m.mnt))
        if record is not None and record.negotiated is not None and record.negotiated.minor >= NOTIFY_PRUNE_MINOR:
            assert wait_for(create, 30, interval=0.05)  # the kernel forgets what fastpass prunes
        else:
            with open("/proc/sys/vm/drop_caches", "w") as f:  # before Linux 6.18: the kernel forgets unused inodes
                f.write("2")
            assert create()
        assert (m.backing / "after").read_bytes() == b"y"
