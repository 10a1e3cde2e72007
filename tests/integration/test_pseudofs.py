"""Backings whose file sizes are not their lengths: procfs, sysfs, cgroup2, tracefs.

/proc/uptime says st_size 0 and gives a line; a sysfs attribute says 4096 and gives a few
bytes.  Through fastpass such files read as on the backing (docs/internals.md: What is served), on
each engine and configuration: /proc itself as the backing, and these filesystems mounted
below an ordinary backing directory, beside ordinary files that keep the page cache or
kernel passthrough.  Only files whose content is stable are compared; nothing here writes
to the system but the timer slack and OOM score of a process the test started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpass import _linux
from tests.conftest import ENGINES, fastpass_mount
from tests.integration.test_passthrough import op_count, stats

# Per filesystem: its mount type and the files (relative to its root) whose content stays put.
STABLE = {
    "proc": ("proc", ["sys/kernel/ostype", "sys/kernel/osrelease", "kallsyms"]),  # kallsyms: 5 MB here
    "sys": ("sysfs", ["devices/system/cpu/possible", "kernel/mm/transparent_hugepage/enabled"]),
    "cgroup": ("cgroup2", ["cgroup.controllers", "cgroup.max.depth"]),
    "tracing": ("tracefs", ["README", "available_events"]),
}


# One worker each: these filesystems (but cgroup2) have no file handles, by which other workers
# reopen inodes (docs/operations.md: Workers), so /proc as the backing refuses several workers.
CONFIGS = {
    "native-1": ENGINES["native-1"],
    "native-1-uring": ENGINES["native-1-uring"],
    "native-1-passthrough": ("--workers", "1", "--passthrough", "on"),
    "native-1-writeback": ("--workers", "1", "--passthrough", "off", "--writeback-cache"),
    "pyfuse3": ENGINES["pyfuse3"],
}


@pytest.fixture(params=list(CONFIGS))
def config(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return CONFIGS[request.param]


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A process of our own whose /proc entries stay put while the test reads them."""
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


def read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def same(mnt: Path, real: Path, names: list[str]) -> list[str]:
    """The names that exist under `real` (each read through the mount equals the real file); at least one."""
    found = [name for name in names if (real / name).exists()]
    assert found, f"none of {names} under {real}"
    for name in found:
        assert read(mnt / name) == read(real / name), name
    return found


def test_proc_as_the_backing(tmp_path: Path, config: tuple[str, ...], sleeper: int) -> None:
    """`fastpass mount /proc m -w 1; cat m/uptime` prints the uptime; pread at an offset, a 5 MB
    file read in many requests, a process's own status, and the sizes stat gives are the backing's."""
    with fastpass_mount(tmp_path, *config, backing=Path("/proc")) as m:
        r = subprocess.run(["cat", m.mnt / "uptime"], capture_output=True, check=True, timeout=30)
        up, idle = r.stdout.split()
        assert float(up) > 0 and float(idle) >= 0
        assert os.stat(m.mnt / "uptime").st_size == os.stat("/proc/uptime").st_size == 0
        same(m.mnt, Path("/proc"), STABLE["proc"][1])
        status = read(m.mnt / str(sleeper) / "status")
        assert status.startswith(b"Name:\tsleep\n") and f"\nPid:\t{sleeper}\n".encode() in status
        fd = os.open(m.mnt / "sys/kernel/ostype", os.O_RDONLY)
        try:
            assert os.pread(fd, 3, 2) == b"nux" and os.pread(fd, 10, 6) == b""
        finally:
            os.close(fd)
        # /proc/self is whoever resolves it: through the mount, the server's worker (docs/internals.md)
        assert os.readlink(m.mnt / "self") != str(os.getpid())


@contextlib.contextmanager
def mounted_below(backing: Path) -> Iterator[dict[str, Path]]:
    """STABLE's filesystems mounted under `backing` (those this kernel lets us mount), always unmounted."""
    done: dict[str, Path] = {}
    try:
        for name, (fstype, _) in STABLE.items():
            (backing / name).mkdir()
            with contextlib.suppress(OSError):  # a filesystem this kernel lacks: the others still run
                _linux.mount("none", str(backing / name), fstype, _linux.MS_NOSUID | _linux.MS_NODEV, "")
                done[name] = backing / name
        assert "proc" in done and "sys" in done, f"could not mount proc and sysfs: {done}"
        yield done
    finally:
        for path in done.values():
            _linux.umount2(str(path), _linux.MNT_DETACH)


def test_mounted_inside_the_backing(tmp_path: Path, config: tuple[str, ...], sleeper: int) -> None:
    """procfs, sysfs, cgroup2 and tracefs below an ordinary backing: their files read as the real
    ones and every read reaches the server, while an ordinary file beside them keeps its path
    (kernel passthrough where it is on); and a write reaches the backing."""
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "plain").write_bytes(b"p" * 10000)
    with mounted_below(backing) as below, fastpass_mount(tmp_path, *config, backing=backing) as m:
        for name, path in below.items():
            same(m.mnt / name, path, STABLE[name][1])
        assert read(m.mnt / "plain") == b"p" * 10000
        # timerslack_ns is a seq_file (no pwrite: ESPIPE); oom_score_adj is not
        for name, value in (("timerslack_ns", b"12345\n"), ("oom_score_adj", b"7\n")):
            path = m.mnt / "proc" / str(sleeper) / name
            with open(path, "wb", buffering=0) as f:
                assert f.write(value) == len(value)
            assert read(Path(f"/proc/{sleeper}/{name}")) == read(path) == value
        if m.engine == "native":
            s = stats(m.mnt)
            assert op_count(s, "READ") > 0
            if m.passthrough:  # only the ordinary file went through the kernel
                assert sum(w["opens_passthrough"] for w in s["workers"]) == 1


def test_o_direct_is_the_backings_answer(tmp_path: Path) -> None:
    """procfs refuses O_DIRECT, and so does the mount: the kernel never cuts a read to the size."""
    with fastpass_mount(tmp_path, "--workers", "1", backing=Path("/proc")) as m:
        for path in (Path("/proc/uptime"), m.mnt / "uptime"):
            with pytest.raises(OSError) as e:
                os.open(path, os.O_RDONLY | os.O_DIRECT)
            assert e.value.errno == errno.EINVAL
