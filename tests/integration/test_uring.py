"""The io_uring path as a mount sees it: which path each worker uses, the fallback where the
kernel refuses io_uring, many requests in flight in one worker, what goes to the ring and
what does not (READDIRPLUS's batch, buffered reads), an idle worker asleep, an abort with
calls out, and the options' checks."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import fastpass_mount, is_mounted, run_fastpass, wait_for
from tests.integration.test_cli import assert_nothing_left, refuse_mount
from tests.integration.test_passthrough import op_count, stats

MiB = 1 << 20


@contextlib.contextmanager
def io_uring_refused() -> Iterator[None]:
    """fastpass started with io_uring refused (EPERM), as kernel.io_uring_disabled=2 refuses it, but
    to the server's processes alone: a seccomp filter (tests.no_io_uring) on the commands run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conftest, "FASTPASS", [sys.executable, "-m", "tests.no_io_uring", str(errno.EPERM), *conftest.FASTPASS])
        yield


def test_workers_report_the_ring(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "off") as m:
        (m.mnt / "f").write_bytes(b"x" * 100_000)
        assert (m.mnt / "f").read_bytes() == b"x" * 100_000
        assert [w["io"] for w in stats(m.mnt)["workers"]] == ["uring", "uring"]
        text = run_fastpass("stats", str(m.mnt), env={**os.environ, "COLUMNS": "80"}).stdout
        lines = [line for line in text.splitlines() if not line.startswith("options: ")]  # that one runs on
        assert "…" not in text and max(map(len, lines)) <= 80, text  # every figure whole
        assert text.count(" uring ") == 2 and "peak" in text


def test_plain_on_request(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--io", "plain", "--passthrough", "off") as m:
        (m.mnt / "f").write_bytes(b"y" * 10)
        s = stats(m.mnt)
        assert {w["io"] for w in s["workers"]} == {"plain"} and op_count(s, "WRITE") == 1


def test_fallback_when_the_kernel_refuses_io_uring(tmp_path: Path) -> None:
    """With io_uring refused the mount still serves, on plain syscalls, says so once in the log
    and in stats."""
    with io_uring_refused(), fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "off") as m:
        data = os.urandom(3 * MiB + 123)
        (m.mnt / "f").write_bytes(data)
        with open(m.mnt / "f", "r+b") as f:
            os.fsync(f.fileno())
            os.posix_fallocate(f.fileno(), 0, 4 * MiB)
        assert hashlib.sha256((m.mnt / "f").read_bytes()[: len(data)]).digest() == hashlib.sha256(data).digest()
        assert sorted(os.listdir(m.mnt)) == ["f"]
        s = stats(m.mnt)
        assert [w["io"] for w in s["workers"]] == ["plain", "plain"]
        assert op_count(s, "READ") > 0 and op_count(s, "FSYNC") == 1
        assert m.log is not None
        assert m.log.read_text().count("io_uring unavailable (io_uring_setup failed: Operation not permitted)") == 1


def direct_readers(m, jobs: int, rounds: int) -> list[int]:
    """`jobs` threads each read `rounds` 4 KiB O_DIRECT blocks of a 16 MiB file through the mount
    (every READ reaches the backing disk, so a worker has several at once); the offsets whose
    data differed from the backing's, or any if a reader did not finish."""
    size = 16 * MiB
    (m.backing / "f").write_bytes(os.urandom(size))
    expect = (m.backing / "f").read_bytes()
    bad: list[int] = []

    def reader(job: int) -> None:
        buf = mmap.mmap(-1, 4096)
        fd = os.open(m.mnt / "f", os.O_RDONLY | os.O_DIRECT)
        try:
            for i in range(rounds):
                off = ((i * 7919 + job * 104729) % (size // 4096)) * 4096
                if os.preadv(fd, [buf], off) != 4096 or buf[:] != expect[off : off + 4096]:
                    bad.append(off)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(j,)) for j in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return bad + [-1 for t in threads if t.is_alive()]


def test_one_worker_keeps_many_requests_in_flight(tmp_path: Path) -> None:
    """Eight readers of uncached data (O_DIRECT, so each READ goes to the backing disk) on one
    worker: the worker has several READs on the ring at once instead of one at a time."""
    with fastpass_mount(tmp_path, "--workers", "1", "--passthrough", "off", "--io-depth", "8") as m:
        assert not direct_readers(m, 8, 300)
        (w,) = stats(m.mnt)["workers"]
        assert w["io"] == "uring" and w["peak_in_flight"] >= 2, w


@pytest.mark.parametrize("depth", ["0", "100000"])
def test_io_depth_checked(tmp_path: Path, depth: str) -> None:
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    refuse_mount(tmp_path, tmp_path / "backing", tmp_path / "mnt", "--io-depth", options=("--io-depth", depth))
    assert_nothing_left(tmp_path)


def _listing(d: Path) -> dict[bytes, tuple]:
    """Name -> the attributes a listing shows, as `ls -l` takes them (readdir, then lstat)."""
    with os.scandir(os.fsencode(d)) as it:
        return {e.name: _attrs(e.stat(follow_symlinks=False)) for e in it}


def _attrs(st: os.stat_result) -> tuple:
    return st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def test_readdirplus_opens_new_entries_as_one_batch_on_the_ring(tmp_path: Path) -> None:
    """A listing of 600 entries the worker has never seen: each is opened on the ring (one call
    per name, UTF-8 or not), with the backing's attributes.  Listed again, the entries the worker
    now holds make no ring call at all.  (No watcher, so the kernel keeps no listing across
    opens and the second listing reaches the worker too.)"""
    with fastpass_mount(tmp_path, "--workers", "1", "--passthrough", "off", "--revalidate", "60") as m:
        d = m.backing / "d"
        d.mkdir()
        for i in range(590):
            (d / f"file{i:03d}").write_bytes(b"x" * i)
        for i in range(5):
            (d / f"sub{i}").mkdir()
        os.symlink("file001", d / "link")
        os.mkfifo(d / "fifo")
        open(os.path.join(os.fsencode(d), b"caf\xe9"), "wb").close()  # not UTF-8
        (d / "caf\u00e9 \u2603").write_bytes(b"snow")  # UTF-8, not ASCII
        names = set(os.listdir(os.fsencode(d)))
        assert len(names) == 599

        before = stats(m.mnt)
        assert _listing(m.mnt / "d") == {n: _attrs(os.lstat(os.path.join(os.fsencode(d), n))) for n in names}
        after = stats(m.mnt)
        (w0,), (w1,) = before["workers"], after["workers"]
        assert op_count(after, "READDIRPLUS") > op_count(before, "READDIRPLUS")
        assert w1["ring_calls"] - w0["ring_calls"] == len(names)

        assert _listing(m.mnt / "d") == {n: _attrs(os.lstat(os.path.join(os.fsencode(d), n))) for n in names}
        again = stats(m.mnt)
        assert op_count(again, "READDIRPLUS") > op_count(after, "READDIRPLUS")
        assert again["workers"][0]["ring_calls"] == w1["ring_calls"]


def test_a_ring_worker_sleeps_when_idle(tmp_path: Path) -> None:
    """After a burst that had calls on the ring, an idle worker blocks (it neither polls the
    device nor spins): under 5 clock ticks of CPU in a second."""
    with fastpass_mount(tmp_path, "--workers", "1", "--passthrough", "off") as m:
        (m.backing / "f").write_bytes(os.urandom(MiB))

        def read_direct() -> None:
            buf = mmap.mmap(-1, 64 * 1024)
            fd = os.open(m.mnt / "f", os.O_RDONLY | os.O_DIRECT)
            try:
                while os.readv(fd, [buf]):
                    pass
            finally:
                os.close(fd)

        threads = [threading.Thread(target=read_direct) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (w,) = stats(m.mnt)["workers"]
        assert w["ring_calls"] > 0

        def cpu_ticks() -> int:
            fields = Path(f"/proc/{w['pid']}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime, stime

        start = cpu_ticks()
        time.sleep(1)
        assert cpu_ticks() - start < 5


def test_buffered_reads_take_the_page_cache_inline_and_the_rest_on_the_ring(tmp_path: Path) -> None:
    """A buffered READ is answered from the backing's page cache without the ring where it can
    be, and from the ring for what is not cached: a file whose first half alone is cached reads
    back whole and right (a READ across the edge takes both ways), with ring calls for the
    second half and none for a cached reread."""
    with fastpass_mount(tmp_path, "--workers", "1", "--passthrough", "off") as m:
        data = os.urandom(4 * MiB)
        (m.backing / "f").write_bytes(data)
        fd = os.open(m.backing / "f", os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # nothing cached
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead past what is read
            half = 2 * MiB + 8192  # not a READ's size: one READ finds its first 8 KiB cached, not the rest
            assert os.pread(fd, half, 0) == data[:half]
        finally:
            os.close(fd)
        (w0,) = stats(m.mnt)["workers"]
        assert (m.mnt / "f").read_bytes() == data
        (w1,) = stats(m.mnt)["workers"]
        assert w1["ring_calls"] > w0["ring_calls"]
        # Now all of it is in the backing's page cache: a reread (past the mount's own cache) is inline.
        fd = os.open(m.mnt / "f", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the mount's pages, not the backing's
            assert os.pread(fd, 4 * MiB, 0) == data
        finally:
            os.close(fd)
        (w2,) = stats(m.mnt)["workers"]
        assert w2["ring_calls"] == w1["ring_calls"]
        assert op_count(stats(m.mnt), "READ") > 0


@contextlib.contextmanager
def fusectl() -> Iterator[Path]:
    """/sys/fs/fuse/connections, mounted for the test if it was not (and unmounted after)."""
    where = Path("/sys/fs/fuse/connections")
    mounted = is_mounted(where)
    if not mounted:
        subprocess.run(["mount", "-t", "fusectl", "none", str(where)], check=True)
    try:
        yield where
    finally:
        if not mounted:
            subprocess.run(["umount", str(where)], check=True)


def test_an_abort_with_calls_on_the_ring_ends_everything_cleanly(tmp_path: Path) -> None:
    """The connection aborted (fusectl) while eight O_DIRECT readers keep the ring busy: every
    reader gets an error instead of hanging, and the server stops and unmounts without a
    traceback."""
    with fastpass_mount(tmp_path, "--workers", "1", "--passthrough", "off") as m:
        (m.backing / "f").write_bytes(os.urandom(16 * MiB))
        errors: list[int] = []
        reads = [0] * 8

        def reader(job: int) -> None:
            buf = mmap.mmap(-1, 4096)
            fd = os.open(m.mnt / "f", os.O_RDONLY | os.O_DIRECT)
            try:
                while True:
                    os.preadv(fd, [buf], ((reads[job] * 7919 + job * 104729) % 4096) * 4096)
                    reads[job] += 1
            except OSError as e:
                errors.append(e.errno)
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)

        threads = [threading.Thread(target=reader, args=(j,), daemon=True) for j in range(8)]
        for t in threads:
            t.start()
        assert wait_for(lambda: min(reads) >= 20, 10), reads
        with fusectl() as connections:
            (connections / str(os.minor(os.stat(m.mnt).st_dev)) / "abort").write_text("1")
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads), "a reader hung after the abort"
        assert set(errors) <= {errno.ECONNABORTED, errno.ENOTCONN} and len(errors) == 8, errors
        assert wait_for(lambda: not is_mounted(m.mnt), 10)
        assert m.pid is not None and wait_for(lambda: not Path(f"/proc/{m.pid}").exists(), 10)
        assert m.log is not None and "Traceback" not in m.log.read_text()
