"""Fixtures that mount for real and always clean up.

`fs` runs a test on fastpass with one worker serving every byte in
userspace, once on plain syscalls ("native-1") and once on its io_uring
("native-1-uring"), on fastpass with four workers and kernel passthrough
("native-4", io_uring for what still reaches userspace), on two workers
with the kernel's writeback cache ("native-2-writeback"), on the pyfuse3
engine, and on
a plain bind mount of the same kind of backing dir ("bind"), so every case
is first checked against the real kernel's own answer.  `native` is
fastpass alone (all its configurations), and `fastpass_mount` mounts with
chosen options.

Teardown, even after a failure: `fastpass unmount`, then a lazy umount2 if
the mount is still there, then SIGKILL of the server by its pid; and the
server's log is scanned for tracebacks, which fail the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

from fastpass import state
from fastpass.kernel.abi import InitFlag

settings.register_profile("fastpass", deadline=None, max_examples=60)
settings.load_profile("fastpass")

FASTPASS = [sys.executable, "-m", "fastpass"]
TREE = Path(__file__).resolve().parent.parent  # the fastpass under test
OPERATIONS = TREE / "docs" / "operations.md"  # shows the fstab line and systemd unit the tests mount with
SHELL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # mount.fuse3's shell's, and systemd's
MOUNT_TIMEOUT = 30
_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND = 4096
MNT_DETACH = 2


@dataclass
class Mounted:
    kind: str  # "native" or "bind"
    backing: Path
    mnt: Path
    log: Path | None = None
    pid: int | None = None
    allowed_log_errors: list[str] = field(default_factory=list)
    passthrough: bool = False  # regular files' data is passed through by the kernel
    writeback: bool = False  # the kernel's writeback cache: it keeps regular files' size, mtime and ctime
    engine: str = ""  # fastpass's engine: "native" or "pyfuse3"


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def err(fn, *args, **kw) -> int:
    """The errno `fn` fails with, 0 if it succeeds."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


def is_mounted(path: Path) -> bool:
    target = os.fsencode(str(path))
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split(b" ")[4] == target for line in f)


def server_pid(mnt: Path) -> int | None:
    """The supervisor's pid, from the record fastpass keeps beside the mount."""
    record = state.read(str(mnt))
    return record.pid if record else None


def run_fastpass(*args: str, timeout: float = MOUNT_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*FASTPASS, *args], capture_output=True, text=True, timeout=timeout, check=False, **kw)


def start_native(backing: Path, mnt: Path, log: Path, *options: str, nofile: int | None = None) -> Mounted:
    """Mount; `nofile`: the server's RLIMIT_NOFILE, soft and hard (as `ulimit -n` in the shell that starts it)."""
    limit = None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    r = run_fastpass("mount", str(backing), str(mnt), "--log", str(log), *options, preexec_fn=limit)
    if r.returncode != 0:
        raise RuntimeError(f"fastpass mount failed ({r.returncode}): {r.stderr}\nlog:\n{_read(log)}")
    record = state.read(str(mnt))
    assert record is not None, "a mounted server leaves its record"
    n = record.negotiated
    return Mounted("native", backing, mnt, log, record.pid, passthrough=n is not None and n.has(InitFlag.PASSTHROUGH),
                   engine=record.config.engine, writeback=n is not None and n.has(InitFlag.WRITEBACK_CACHE))  # fmt: skip


def _read(path: Path | None) -> str:
    try:
        return path.read_text() if path else ""
    except OSError:
        return ""


def stop(m: Mounted) -> None:
    """Unmount and end the server, whatever state they are in."""
    if m.kind == "native" and is_mounted(m.mnt):
        with contextlib.suppress(subprocess.TimeoutExpired):
            run_fastpass("unmount", str(m.mnt), timeout=15)
    if is_mounted(m.mnt):
        _libc.umount2(os.fsencode(str(m.mnt)), MNT_DETACH)
    if m.pid is not None:
        deadline = time.monotonic() + 10
        while state.alive(m.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if state.alive(m.pid):
            os.kill(m.pid, signal.SIGKILL)


def check_log(m: Mounted) -> None:
    text = _read(m.log)
    bad = [line for line in text.splitlines() if ("Traceback" in line or " ERROR " in line)
           and not any(allowed in line for allowed in m.allowed_log_errors)]  # fmt: skip
    assert not bad, f"server logged errors:\n{text}"


@contextlib.contextmanager
def fastpass_mount(tmp_path: Path, *options: str, backing: Path | None = None,
                   nofile: int | None = None) -> Iterator[Mounted]:  # fmt: skip
    backing = backing or tmp_path / "backing"
    backing.mkdir(exist_ok=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    m = Mounted("native", backing, mnt, tmp_path / "server.log")
    try:
        m = start_native(backing, mnt, m.log, *options, nofile=nofile)
        yield m
    finally:
        m.pid = m.pid or server_pid(mnt)
        stop(m)
    check_log(m)


@contextlib.contextmanager
def bind_mount(tmp_path: Path) -> Iterator[Mounted]:
    backing = tmp_path / "backing"
    backing.mkdir(exist_ok=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    if _libc.mount(os.fsencode(str(backing)), os.fsencode(str(mnt)), None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "bind mount failed")
    m = Mounted("bind", backing, mnt)
    try:
        yield m
    finally:
        stop(m)


# fastpass serving every byte in userspace with 1 worker, on both I/O paths; fastpass with 4
# workers and kernel passthrough of regular files; 2 workers with the writeback cache (writes
# gathered in the page cache, sent later through any writable fh, on any worker); the pyfuse3 engine (libfuse, one process); then
# the kernel's own answer, a bind mount.
# FASTPASS_TEST_TRANSPORT=uring runs the configurations on io_uring with their requests from
# FUSE-over-io_uring entries (--transport uring) instead of what the kernel offers.
_TRANSPORT = ("--transport", os.environ["FASTPASS_TEST_TRANSPORT"]) if os.environ.get("FASTPASS_TEST_TRANSPORT") else ()
NATIVE = {
    "native-1": ("--workers", "1", "--passthrough", "off", "--io", "plain"),
    "native-1-uring": ("--workers", "1", "--passthrough", "off", "--io", "uring", *_TRANSPORT),
    "native-4": ("--workers", "4", "--passthrough", "on", *_TRANSPORT),
    "native-2-writeback": ("--workers", "2", "--passthrough", "off", "--writeback-cache", *_TRANSPORT),
}
ENGINES = {**NATIVE, "pyfuse3": ("--engine", "pyfuse3")}


@pytest.fixture(params=[*ENGINES, "bind"])
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mounted]:
    """A mount of an empty backing dir: fastpass (each engine and configuration), then the bind-mount reference."""
    cm = bind_mount(tmp_path) if request.param == "bind" else fastpass_mount(tmp_path, *ENGINES[request.param])
    with cm as m:
        yield m


@pytest.fixture(params=list(NATIVE))
def native(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mounted]:
    """fastpass alone, in each configuration."""
    with fastpass_mount(tmp_path, *NATIVE[request.param]) as m:
        yield m


def mounts_under(path: Path) -> list[tuple[str, str]]:
    """(mount point, fstype) of every mount at or below `path`, from our mountinfo."""
    prefix = os.fsencode(str(path))
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            left, _, right = line.rstrip(b"\n").partition(b" - ")
            point = left.split(b" ")[4]
            if point == prefix or point.startswith(prefix + b"/"):
                found.append((os.fsdecode(point), os.fsdecode(right.split(b" ")[0])))
    return found


@pytest.fixture(scope="session")
def helper_env() -> dict[str, str]:
    """An environment in which the installed `fastpass` command, as mount(8) (through mount.fuse3) and
    systemd find it, runs the fastpass under test: PYTHONPATH, which both pass on, puts this tree first."""
    assert os.path.exists("/sbin/mount.fuse"), "no /sbin/mount.fuse: install fuse3 (tools/setup)"
    assert shutil.which("fastpass", path=SHELL_PATH), f"no `fastpass` in {SHELL_PATH}: run tools/setup"
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{TREE}:{path}" if path else str(TREE))


@contextlib.contextmanager
def scratch_dir(prefix: str = "fastpass-test-") -> Iterator[Path]:
    """A fresh directory in /tmp that every uid can traverse (pytest's tmp_path is 0700 root), with
    a path of the same length each time; removed afterwards with whatever is still mounted in it."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for point, _ in reversed(mounts_under(base)):  # only ours: everything here is ours
            _libc.umount2(os.fsencode(point), MNT_DETACH)
        if not mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def world_dir():
    """A fresh directory every uid can traverse."""
    with scratch_dir() as base:
        yield base
