"""FUSE-over-io_uring (--transport): the file operations on a uring mount with one and two
workers against a bind mount; the choice `auto` makes with the fuse module's enable_uring off
and on, as root and as a normal user; a worker killed while callers on every CPU are busy;
abort and SIGTERM with requests in the entries; and what stats says.

enable_uring is machine-wide: a test that sets it puts it back (`enable_uring`), and mounts
other tests start meanwhile must work either way (an `auto` mount then uses the rings).  The
tests that need it skip, saying why, on a kernel without FUSE-over-io_uring or when not root.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpass.transport import entries as transport
from tests import conftest
from tests.conftest import Mounted, bind_mount, err, fastpass_mount, is_mounted, wait_for
from tests.integration.test_cli import assert_nothing_left, assert_refused, refuse_mount
from tests.integration.test_passthrough import stats
from tests.integration.test_uring import direct_readers, fusectl, io_uring_refused
from tests.users import GID, UID, run_cli_as

MiB = 1 << 20
URING = ("--transport", "uring", "--passthrough", "off")


def _needs_uring() -> None:
    if transport.enabled() is None:
        pytest.skip("this kernel has no FUSE-over-io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)")
    if os.geteuid() != 0:
        pytest.skip("--transport uring with enable_uring off, and setting it, take root")


@contextlib.contextmanager
def enable_uring(on: bool) -> Iterator[None]:
    """The fuse module's enable_uring set to `on` for the block, put back as it was after."""
    _needs_uring()
    before = transport.enabled()
    if before != on:
        Path(transport.PARAMETER).write_text("Y" if on else "N")
    try:
        yield
    finally:
        if before != on:
            Path(transport.PARAMETER).write_text("Y" if before else "N")


# --- the operations, on uring with one and two workers, and on a bind mount --------------------
CONFIGS = {"uring-1": ("--workers", "1", *URING), "uring-2": ("--workers", "2", *URING)}


@pytest.fixture(params=[*CONFIGS, "bind"])
def mnt(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mounted]:
    if request.param == "bind":
        with bind_mount(tmp_path) as m:
            yield m
        return
    _needs_uring()
    with fastpass_mount(tmp_path, *CONFIGS[request.param]) as m:
        yield m
        s = stats(m.mnt)  # every request of the case came through the entries (none stranded on the device)
        assert s["transport"] == "uring" and {w["transport"] for w in s["workers"]} == {"uring"}, s["workers"]
        assert sum(s["requests_per_queue"]) >= sum(o["count"] for o in s["ops"] if o["name"] not in
                                                   ("FORGET", "BATCH_FORGET", "INTERRUPT")) > 0  # fmt: skip


def test_files(mnt: Mounted) -> None:
    p = mnt.mnt / "f"
    p.write_bytes(b"hello")
    with open(p, "ab") as f:
        f.write(b" world")
    assert p.read_bytes() == b"hello world"
    os.truncate(p, 5)
    assert p.read_bytes() == b"hello" and os.stat(p).st_size == 5
    os.chmod(p, 0o640)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    os.utime(p, ns=(1_000_000_000, 2_000_000_123))
    assert os.stat(p).st_mtime_ns == 2_000_000_123
    os.link(p, mnt.mnt / "hard")
    assert os.stat(p).st_nlink == 2
    os.symlink("f", mnt.mnt / "sym")
    assert os.readlink(mnt.mnt / "sym") == "f" and (mnt.mnt / "sym").read_bytes() == b"hello"
    os.unlink(mnt.mnt / "hard")
    os.unlink(p)
    assert err(os.stat, p) == errno.ENOENT and err(os.open, mnt.mnt / "d" / "x", os.O_RDONLY) == errno.ENOENT
    fd = os.open(mnt.mnt / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    assert err(os.open, mnt.mnt / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


def test_dirs(mnt: Mounted) -> None:
    d = mnt.mnt / "d"
    d.mkdir()
    names = [f"n{i:03}" for i in range(300)]
    for name in names:
        (d / name).write_bytes(name.encode())
    assert sorted(os.listdir(d)) == names
    with os.scandir(d) as it:
        assert {e.name: e.stat().st_size for e in it} == {name: 4 for name in names}
    (d / "sub" / "deeper").mkdir(parents=True)
    assert err(os.rmdir, d) == errno.ENOTEMPTY
    assert err(os.mkdir, d) == errno.EEXIST
    for name in names:
        os.unlink(d / name)
    os.rmdir(d / "sub" / "deeper")
    os.rmdir(d / "sub")
    os.rmdir(d)
    assert os.listdir(mnt.mnt) == []


def test_xattrs(mnt: Mounted) -> None:
    p = mnt.mnt / "x"
    p.write_bytes(b"")
    big = os.urandom(4000)
    os.setxattr(p, "user.small", b"v")
    os.setxattr(p, "user.big", big)
    assert os.getxattr(p, "user.small") == b"v" and os.getxattr(p, "user.big") == big
    assert sorted(n for n in os.listxattr(p) if n.startswith("user.")) == ["user.big", "user.small"]
    os.removexattr(p, "user.small")
    assert err(os.getxattr, p, "user.small") == errno.ENODATA
    assert err(os.setxattr, p, "user.big", b"x", os.XATTR_CREATE) == errno.EEXIST


def test_rename(mnt: Mounted) -> None:
    m = mnt.mnt
    (m / "a").write_bytes(b"a")
    (m / "b").write_bytes(b"b")
    os.rename(m / "a", m / "b")
    assert (m / "b").read_bytes() == b"a" and not (m / "a").exists()
    (m / "d1" / "inner").mkdir(parents=True)
    (m / "d2").mkdir()
    (m / "d2" / "keep").write_bytes(b"")
    assert err(os.rename, m / "d1", m / "d2") == errno.ENOTEMPTY
    os.rename(m / "b", m / "d1" / "inner" / "b")
    os.rename(m / "d1", m / "d3")
    assert (m / "d3" / "inner" / "b").read_bytes() == b"a"
    assert sorted(os.listdir(m)) == ["d2", "d3"]


def test_large_reads_and_writes(mnt: Mounted) -> None:
    data = os.urandom(9 * MiB + 123)
    p = mnt.mnt / "big"
    p.write_bytes(data)
    assert p.read_bytes() == data
    with open(p, "r+b", buffering=0) as f:
        f.seek(3 * MiB + 5)
        f.write(b"\xff" * (2 * MiB))
        f.seek(0)
        chunks = []
        while chunk := f.read(MiB):
            chunks.append(chunk)
    expect = data[: 3 * MiB + 5] + b"\xff" * (2 * MiB) + data[5 * MiB + 5 :]
    assert b"".join(chunks) == expect and (mnt.backing / "big").read_bytes() == expect


def test_direct_io(mnt: Mounted) -> None:
    p = mnt.mnt / "direct"
    buf = mmap.mmap(-1, 64 * 1024)  # page aligned, as O_DIRECT wants
    data = os.urandom(len(buf))
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    try:
        for block in range(16):
            buf[:] = data
            buf[:8] = block.to_bytes(8, "little")
            assert os.pwritev(fd, [buf], block * len(buf)) == len(buf)
        small = mmap.mmap(-1, 4096)
        for i in range(64):
            off = (i * 7919 % 256) * 4096
            assert os.preadv(fd, [small], off) == 4096
            block, within = divmod(off, len(buf))
            want = block.to_bytes(8, "little") + data[8:4096] if within == 0 else data[within : within + 4096]
            assert small[:] == want
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 16 * len(buf)


# --- auto, the parameter, and refusals --------------------------------------------------------
def test_auto_reads_the_device_while_the_kernel_does_not_offer_the_rings(tmp_path: Path) -> None:
    with enable_uring(False), fastpass_mount(tmp_path, "--workers", "2") as m:
        (m.mnt / "f").write_bytes(b"x")
        s = stats(m.mnt)
        assert (s["transport"], s["requests_per_queue"], {w["transport"] for w in s["workers"]}) == ("dev", [], {"dev"})
        assert m.log is not None
        assert "requests from /dev/fuse: the kernel does not offer FUSE-over-io_uring" in m.log.read_text()


def test_auto_takes_the_rings_where_the_kernel_offers_them(tmp_path: Path) -> None:
    with enable_uring(True), fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "off") as m:
        (m.mnt / "f").write_bytes(b"x" * 100_000)
        assert (m.mnt / "f").read_bytes() == b"x" * 100_000
        s = stats(m.mnt)
        assert s["transport"] == "uring" and len(s["requests_per_queue"]) == transport.possible_cpus()
        assert m.log is not None and "requests from FUSE-over-io_uring" in m.log.read_text()
        text = conftest.run_fastpass("stats", str(m.mnt), env={**os.environ, "COLUMNS": "300"}).stdout
        assert "requests from FUSE-over-io_uring, per queue (CPU)" in text


def test_auto_reads_the_device_where_io_uring_is_refused(tmp_path: Path) -> None:
    """enable_uring on, but io_uring refused to the server (seccomp): /dev/fuse, said why."""
    with enable_uring(True), io_uring_refused(), fastpass_mount(tmp_path, "--workers", "1") as m:
        (m.mnt / "f").write_bytes(b"y")
        assert stats(m.mnt)["transport"] == "dev"
        assert m.log is not None
        assert "requests from /dev/fuse: the workers do not use io_uring" in m.log.read_text()


def test_uring_as_root_turns_the_parameter_on_for_the_start_only(tmp_path: Path) -> None:
    with enable_uring(False), fastpass_mount(tmp_path, "--workers", "1", *URING) as m:
        assert transport.enabled() is False  # put back once INIT was answered
        (m.mnt / "f").write_bytes(b"z")
        assert stats(m.mnt)["transport"] == "uring"
        assert m.log is not None and f"turned on {transport.PARAMETER} for this mount's start" in m.log.read_text()


def test_uring_refused_to_a_normal_user_while_the_parameter_is_off(world_dir: Path) -> None:
    with enable_uring(False):
        backing, mnt = world_dir / "backing", world_dir / "mnt"
        for d in (backing, mnt):
            d.mkdir()
            os.chown(d, UID, GID)
        code, out, errors = run_cli_as(UID, GID, [], "mount", str(backing), str(mnt), "--transport", "uring",
                                       env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(world_dir)})  # fmt: skip
        assert_refused(code, out, errors, "--transport uring", "enable_uring", "only root")
        assert_nothing_left(world_dir)


@pytest.mark.parametrize(("options", "says"), [
    (("--transport", "uring", "--io", "plain"), "needs --io uring"),
    (("--transport", "uring", "--engine", "pyfuse3"), "use --transport dev"),
    (("--queue-depth", "0"), "--queue-depth"),
])  # fmt: skip
def test_options_checked(tmp_path: Path, options: tuple[str, ...], says: str) -> None:
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    refuse_mount(tmp_path, tmp_path / "backing", tmp_path / "mnt", says, options=options)
    assert_nothing_left(tmp_path)


def test_uring_refused_when_io_uring_is(tmp_path: Path) -> None:
    _needs_uring()
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    with io_uring_refused():  # (it patches tests.conftest, whose run_fastpass this calls)
        r = conftest.run_fastpass("mount", str(tmp_path / "backing"), str(tmp_path / "mnt"), *URING)
    assert_refused(r.returncode, r.stdout, r.stderr, "--transport uring: io_uring unavailable")
    assert_nothing_left(tmp_path)


# --- a killed worker, abort and SIGTERM with requests in the entries --------------------------
# A client pinned to one CPU (so its requests go to that CPU's queue) that creates, writes, stats,
# reads and unlinks files until `stop` exists; it prints how many rounds it did and the errnos.
CLIENT = """
import collections, os, sys
mnt, cpu, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.sched_setaffinity(0, {cpu})
d = os.path.join(mnt, f"c{cpu}-{os.getpid()}")
os.mkdir(d)
rounds, errors = 0, collections.Counter()
while not os.path.exists(stop):
    p = os.path.join(d, f"f{rounds % 16}")
    try:
        with open(p, "wb") as f:
            f.write(b"x" * 4000)
        os.stat(p)
        with open(p, "rb") as f:
            assert f.read() == b"x" * 4000
        os.unlink(p)
    except OSError as e:
        errors[e.errno] += 1
    rounds += 1
print(rounds, *(f"{e}:{n}" for e, n in errors.items()), flush=True)
"""


@contextlib.contextmanager
def busy_clients(m: Mounted, tmp_path: Path, per_cpu: int = 2) -> Iterator[list[subprocess.Popen]]:
    """Clients on every CPU this test may use, busy until the block ends; each must end then."""
    stop = tmp_path / "stop"
    cpus = sorted(os.sched_getaffinity(0))
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT, str(m.mnt), str(cpu), str(stop)], stdout=subprocess.PIPE,
                                text=True) for cpu in cpus for _ in range(per_cpu)]  # fmt: skip
    try:
        yield clients
    finally:
        stop.touch()
        deadline = time.monotonic() + 20
        hung = []
        for c in clients:
            try:
                c.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung.append(c.pid)
        if hung:  # end the connection (the fixture kills the server) so that they can be reaped
            conftest.stop(m)
            for c in clients:
                c.kill()
                c.wait(10)
        assert not hung, f"clients {hung} hung"


def _results(clients: list[subprocess.Popen]) -> list[tuple[int, dict[int, int]]]:
    """Each client's (rounds, {errno: count})."""
    out = []
    for c in clients:
        rounds, *errors = c.stdout.read().split()  # type: ignore[union-attr]
        out.append((int(rounds), {int(e): int(n) for e, n in (pair.split(":") for pair in errors)}))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_worker_strands_no_queue(tmp_path: Path, workers: int) -> None:
    """kill -9 each worker in turn while clients on every CPU are busy: every call returns (the
    ones the dead worker held answered by its replacement), and every client goes on."""
    _needs_uring()
    with fastpass_mount(tmp_path, "--workers", str(workers), *URING) as m:
        m.allowed_log_errors.append("exited with -9; replaced by")
        with busy_clients(m, tmp_path) as clients:
            assert wait_for(lambda: min(stats(m.mnt)["requests_per_queue"]) > 100, 20)
            for index in range(workers):
                os.kill(stats(m.mnt)["workers"][index]["pid"], signal.SIGKILL)
                assert wait_for(lambda: stats(m.mnt)["restarts"] == index + 1, 10)  # noqa: B023
                after = stats(m.mnt)
                assert after["transport"] == "uring" and after["workers"][index]["alive"]
                # every queue still serves: requests keep coming through each one
                counts = after["requests_per_queue"]
                assert wait_for(lambda: all(n > b + 100 for n, b in zip(stats(m.mnt)["requests_per_queue"], counts)), 20)  # noqa: B023
        results = _results(clients)
        assert all(rounds > 0 for rounds, _ in results), results
        # What the dead worker held is answered by its replacement; the kernel ends with ECANCELED a
        # request it was handing to the dying worker's ring (tests/integration/test_faults.py)
        assert {e for _, errors in results for e in errors} <= {errno.ECANCELED}, results


@pytest.mark.parametrize("how", ["abort", "sigterm"])
def test_the_end_with_requests_in_the_entries(tmp_path: Path, how: str) -> None:
    """An abort (fusectl) or SIGTERM while clients on every CPU are busy: every client returns,
    and the server stops and unmounts without a traceback."""
    _needs_uring()
    with fastpass_mount(tmp_path, "--workers", "2", *URING) as m:
        with busy_clients(m, tmp_path) as clients:
            assert wait_for(lambda: min(stats(m.mnt)["requests_per_queue"]) > 100, 20)
            if how == "abort":
                with fusectl() as connections:
                    (connections / str(os.minor(os.stat(m.mnt).st_dev)) / "abort").write_text("1")
            else:
                assert m.pid is not None
                os.kill(m.pid, signal.SIGTERM)
            assert m.pid is not None and wait_for(lambda: not Path(f"/proc/{m.pid}").exists(), 15)
        assert all(rounds > 0 for rounds, _ in _results(clients))
        assert not is_mounted(m.mnt)


def test_requests_in_flight_on_one_worker_many_at_once(tmp_path: Path) -> None:
    """Eight O_DIRECT readers on one worker's entries: several READs on its ring at once, each
    answered from its entry's payload."""
    _needs_uring()
    with fastpass_mount(tmp_path, "--workers", "1", *URING) as m:
        assert not direct_readers(m, 8, 200)
        (w,) = stats(m.mnt)["workers"]
        assert w["transport"] == "uring" and w["peak_in_flight"] >= 2, w
