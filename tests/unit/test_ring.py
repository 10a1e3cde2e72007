"""The ring wrapper on its own: set-up and probe, tagged submission, completions as
(tag, result) with errors as negative errno ints, a full queue, the buffer pool."""

from __future__ import annotations

import errno
import mmap
import os
import select
from pathlib import Path

import pytest

from fastpass.uring import buffers
from fastpass.uring.ring import SETUP_FLAGS, Ring, why_unavailable


def wait_for(ring: Ring, tags: set[int]) -> dict[int, int]:
    """Wait until every tag has completed: {tag: result}."""
    got: dict[int, int] = {}
    while len(got) < len(tags):
        got.update(ring.wait())
    return got


@pytest.fixture
def ring():
    r = Ring(16)
    yield r
    r.close()


def test_probe_and_preferred_flags(ring: Ring) -> None:
    assert why_unavailable() is None
    assert ring.flags == SETUP_FLAGS[0], "Linux 6.18 takes single issuer + deferred task running"


def test_read_write_fsync_fallocate_complete_with_their_tags(ring: Ring, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        out = memoryview(bytearray(b"hello ring"))
        ring.writev(fd, out, 4, tag=11)
        assert wait_for(ring, {11}) == {11: len(out)}
        ring.fsync(fd, True, tag=12)
        ring.fallocate(fd, 0, 0, 1 << 16, tag=13)
        assert wait_for(ring, {12, 13}) == {12: 0, 13: 0}
        assert os.fstat(fd).st_size == 1 << 16
        back = memoryview(bytearray(10))
        ring.readv(fd, back, 4, tag=14)
        assert wait_for(ring, {14}) == {14: 10} and bytes(back) == b"hello ring"
    finally:
        os.close(fd)


def test_errors_are_negative_errno_not_raised(ring: Ring, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ring.readv(fd, memoryview(bytearray(8)), 0, tag=1)  # read(2) of a directory
        ring.fsync(9999, False, tag=2)  # not an fd
        assert wait_for(ring, {1, 2}) == {1: -errno.EISDIR, 2: -errno.EBADF}
    finally:
        os.close(fd)


def test_poll_completes_when_there_is_something_to_read(ring: Ring) -> None:
    r, w = os.pipe()
    try:
        ring.poll_in(r, tag=5)
        ring.fsync(w, False, tag=6)  # a pipe has nothing to sync: EINVAL, and the poll still waits
        assert ring.wait() == [(6, -errno.EINVAL)]
        os.write(w, b"x")
        assert wait_for(ring, {5})[5] & select.POLLIN
    finally:
        os.close(r)
        os.close(w)


def test_open_path_gives_an_fd_or_a_negative_errno(ring: Ring, tmp_path: Path) -> None:
    (tmp_path / "caf\u00e9").write_text("x")
    dfd = os.open(tmp_path, os.O_PATH)
    try:
        before = ring.prepared
        ring.open_path(dfd, "caf\u00e9", os.O_PATH | os.O_NOFOLLOW, tag=1)
        ring.open_path(dfd, "missing", os.O_PATH, tag=2)
        assert ring.prepared == before + 2  # what a request's submit tells its calls by
        got = wait_for(ring, {1, 2})
        assert got[2] == -errno.ENOENT
        assert os.path.samestat(os.fstat(got[1]), os.stat(tmp_path / "caf\u00e9"))
        os.close(got[1])
    finally:
        os.close(dfd)


def test_a_full_submission_queue_is_flushed_not_refused(tmp_path: Path) -> None:
    ring = Ring(4)
    try:
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        for tag in range(50):
            ring.fsync(fd, False, tag)
        assert wait_for(ring, set(range(50))) == dict.fromkeys(range(50), 0)
        os.close(fd)
    finally:
        ring.close()


def test_pool_buffers_take_any_request_with_write_payload_page_aligned() -> None:
    pool = buffers.BufferPool(3)
    assert len(pool) == 3
    for buf, data in zip(pool.bufs, pool.data):
        assert len(buf) >= 8192 and len(buf) >= buffers.HEAD + (1 << 20)  # the read-buffer rule
        base = buf.obj  # the mmap behind the view
        assert isinstance(base, mmap.mmap)
        # The payload (and a READ's data) starts HEAD bytes in, on a page boundary of the mapping.
        assert (len(base) - len(buf) + buffers.HEAD) % mmap.PAGESIZE == 0
        assert len(data) >= 1 << 20
