"""The io_uring path as a mount sees it: which path each worker uses, the fallback where the
kernel refuses io_uring, many requests in flight in one worker, and the options' checks."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fastpass_mount
from tests.integration.test_cli import assert_nothing_left, refuse_mount
from tests.integration.test_passthrough import op_count, stats

MiB = 1 << 20
SYSCTL = Path("/proc/sys/kernel/io_uring_disabled")


@contextlib.contextmanager
def io_uring_disabled() -> Iterator[None]:
    """io_uring refused to every process (EPERM), as an administrator can set it; restored after."""
    if not SYSCTL.exists() or not os.access(SYSCTL, os.W_OK):
        pytest.skip("needs a writable kernel.io_uring_disabled (root, Linux 6.6+)")
    before = SYSCTL.read_text().strip()
    SYSCTL.write_text("2")
    try:
        yield
    finally:
        SYSCTL.write_text(before)


def test_workers_report_the_ring(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "off") as m:
        (m.mnt / "f").write_bytes(b"x" * 100_000)
        assert (m.mnt / "f").read_bytes() == b"x" * 100_000
        assert [w["io"] for w in stats(m.mnt)["workers"]] == ["uring", "uring"]


def test_plain_on_request(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--io", "plain", "--passthrough", "off") as m:
        (m.mnt / "f").write_bytes(b"y" * 10)
        s = stats(m.mnt)
        assert {w["io"] for w in s["workers"]} == {"plain"} and op_count(s, "WRITE") == 1


def test_fallback_when_the_kernel_refuses_io_uring(tmp_path: Path) -> None:
    """With io_uring disabled by sysctl the mount still serves, on plain syscalls, says so once
    in the log and in stats."""
    with io_uring_disabled(), fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "off") as m:
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
        assert m.log.read_text().count("io_uring unavailable") == 1


def test_one_worker_keeps_many_requests_in_flight(tmp_path: Path) -> None:
    """Eight readers of uncached data (O_DIRECT, so each READ goes to the backing disk) on one
    worker: the worker has several READs on the ring at once instead of one at a time."""
    with fastpass_mount(tmp_path, "--workers", "1", "--passthrough", "off", "--io-depth", "8") as m:
        size = 16 * MiB
        (m.backing / "f").write_bytes(os.urandom(size))
        expect = (m.backing / "f").read_bytes()
        bad: list[int] = []

        def reader(job: int) -> None:
            buf = mmap.mmap(-1, 4096)
            fd = os.open(m.mnt / "f", os.O_RDONLY | os.O_DIRECT)
            try:
                for i in range(300):
                    off = ((i * 7919 + job * 104729) % (size // 4096)) * 4096
                    n = os.preadv(fd, [buf], off)
                    if n != 4096 or buf[:] != expect[off : off + 4096]:
                        bad.append(off)
            finally:
                os.close(fd)

        threads = [threading.Thread(target=reader, args=(j,)) for j in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad
        (w,) = stats(m.mnt)["workers"]
        assert w["io"] == "uring" and w["peak_in_flight"] >= 2, w


@pytest.mark.parametrize("depth", ["0", "100000"])
def test_io_depth_checked(tmp_path: Path, depth: str) -> None:
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    refuse_mount(tmp_path, tmp_path / "backing", tmp_path / "mnt", "--io-depth", options=("--io-depth", depth))
    assert_nothing_left(tmp_path)
