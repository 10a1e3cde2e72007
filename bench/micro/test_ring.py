"""Micro-benchmarks of the ring from Python (pytest-benchmark): what an operation costs to
prepare, submit and reap, one at a time and in batches of 32, for a NOP (the ring alone) and a
4 KiB readv of a cached file (the ring and a page-cache copy).  A batch's time divided by 32
is the cost per operation.  Figures and the binding's that they replace: fastpass/uring/ring.py.

Run with `python -m pytest bench/micro/test_ring.py -q`; not part of the main suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpass.uring.ring import Ring

BATCH = 32
SIZE = 4096


@pytest.fixture
def ring() -> Iterator[Ring]:
    r = Ring(64)
    yield r
    r.close()


@pytest.fixture
def cached(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """An fd of a file whose BATCH pages are in the page cache, and its data."""
    data = os.urandom(BATCH * SIZE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    assert os.pread(fd, len(data), 0) == data
    yield fd, data
    os.close(fd)


def _reap(ring: Ring, n: int) -> dict[int, int]:
    got: dict[int, int] = {}
    while len(got) < n:
        got.update(ring.wait())
    return got


def test_nop_one(benchmark, ring: Ring) -> None:
    def run():
        ring.nop(7)
        return ring.wait()

    assert benchmark(run) == [(7, 0)]


def test_nop_batch(benchmark, ring: Ring) -> None:
    def run():
        for tag in range(BATCH):
            ring.nop(tag)
        return _reap(ring, BATCH)

    assert benchmark(run) == dict.fromkeys(range(BATCH), 0)


def test_prepare_readv(benchmark, ring: Ring, cached: tuple[int, bytes]) -> None:
    """Preparing a readv alone (the SQE and its iovec), submitted and reaped outside the timing
    every BATCH calls."""
    fd, data = cached
    view = memoryview(bytearray(SIZE))
    count = [0]

    def run():
        ring.readv(fd, view, 0, count[0])
        count[0] += 1
        if count[0] == BATCH:
            _reap(ring, BATCH)
            count[0] = 0

    benchmark(run)
    _reap(ring, count[0])
    assert bytes(view) == data[:SIZE]


def test_readv_one(benchmark, ring: Ring, cached: tuple[int, bytes]) -> None:
    fd, data = cached
    view = memoryview(bytearray(SIZE))

    def run():
        ring.readv(fd, view, SIZE, 1)
        return ring.wait()

    assert benchmark(run) == [(1, SIZE)] and bytes(view) == data[SIZE : 2 * SIZE]


def test_readv_batch(benchmark, ring: Ring, cached: tuple[int, bytes]) -> None:
    fd, data = cached
    buf = memoryview(bytearray(BATCH * SIZE))
    views = [buf[i * SIZE : (i + 1) * SIZE] for i in range(BATCH)]

    def run():
        for i, view in enumerate(views):
            ring.readv(fd, view, i * SIZE, i)
        return _reap(ring, BATCH)

    assert benchmark(run) == dict.fromkeys(range(BATCH), SIZE) and bytes(buf) == data


def test_preadv_one(benchmark, cached: tuple[int, bytes]) -> None:
    """The same read as one syscall, for scale."""
    fd, data = cached
    view = memoryview(bytearray(SIZE))
    assert benchmark(os.preadv, fd, [view], SIZE) == SIZE and bytes(view) == data[SIZE : 2 * SIZE]
