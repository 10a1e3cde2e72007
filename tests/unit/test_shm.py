"""The shared tables without a mount: generations, rings, and locks a dead process held (the inode
table's growth, index and pruning: test_inodes.py)."""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpass.fs.fds import FdBudget
from fastpass.fs.handles import HandleSpace, HandleTable
from fastpass.fs.inodes import InodeTable
from fastpass.shm.counters import CounterSpace, WorkerCounters, percentile
from fastpass.shm.region import BACKING_STRIPES, HANDLE_SHARDS, LOCK_INODES, LOCK_TABLES, RING, U32, Layout, Region
from tests.tables import close_all, inode_space, inode_table


@pytest.fixture(autouse=True)
def _close_tables() -> Iterator[None]:
    yield
    close_all()


def _tables(tmp_path: Path, capacity: int = 64) -> tuple[InodeTable, InodeTable, Region]:
    """Two workers' views (0 and 1) of one small inode table over `tmp_path`."""
    space, counters, region = inode_space(tmp_path, capacity)
    return (inode_table(tmp_path, space, counters, region, 0, fds=1000),
            inode_table(tmp_path, space, counters, region, 1, fds=1000), region)  # fmt: skip


def test_a_nodeid_from_one_worker_resolves_in_another(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    a, b, _ = _tables(tmp_path)
    inode, st_ = a.lookup(a.root, b"f")
    seen = b.get(inode.nodeid)
    assert seen.key == (st_.st_dev, st_.st_ino) and seen.handle == inode.handle
    assert os.fstat(b.fd(seen)).st_ino == st_.st_ino  # b opened its own fd from the handle
    assert b.lookup(b.root, b"f")[0].nodeid == inode.nodeid


def test_forget_frees_once_and_the_slot_comes_back_with_a_new_generation(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    a, b, _ = _tables(tmp_path)
    first, _ = a.lookup(a.root, b"f")
    b.lookup(b.root, b"f")  # two lookups in all
    a.forget(first.nodeid, 1)
    assert b.get(first.nodeid).nodeid == first.nodeid  # still one lookup left
    b.forget(first.nodeid, 1)
    a.sync()
    assert a.index._space.live(a.index._region) == 1  # the root alone
    b.forget(first.nodeid, 1)  # a late forget of a freed nodeid changes nothing
    again, _ = a.lookup(a.root, b"f")
    assert again.nodeid & 0xFFFFFFFF == first.nodeid & 0xFFFFFFFF
    assert again.generation == first.generation + 1 and again.nodeid != first.nodeid


def test_a_reused_inode_number_gets_a_new_nodeid(tmp_path: Path) -> None:
    """Same (st_dev, st_ino) but another handle: the table must not hand out the old nodeid."""
    a, _b, _ = _tables(tmp_path)
    for attempt in range(5):  # another process creating files on the same filesystem may take the number
        (tmp_path / f"f{attempt}").write_text("x")
        old, _ = a.lookup(a.root, f"f{attempt}".encode())
        a._close_local(old)  # as if evicted: nothing pins the old inode any more
        os.unlink(tmp_path / f"f{attempt}")
        for i in range(200):  # ext4 hands the freed number out again soon
            (tmp_path / f"g{attempt}-{i}").write_text("y")
            if (tmp_path / f"g{attempt}-{i}").stat().st_ino == old.key[1]:
                new, _ = a.lookup(a.root, f"g{attempt}-{i}".encode())
                assert new.nodeid != old.nodeid and new.handle != old.handle
                return
    raise AssertionError("the backing never reused the inode number")  # pragma: no cover


def test_a_lock_held_by_a_killed_process_is_released(tmp_path: Path) -> None:
    region = Region(4096)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        region.lock(LOCK_INODES)
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(r, 1)  # the child holds the lock now
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    start = time.monotonic()
    region.lock(LOCK_INODES)  # would block forever if the dead holder kept it
    region.unlock(LOCK_INODES)
    assert time.monotonic() - start < 1


def test_a_wait_for_a_lock_another_process_holds_is_counted() -> None:
    """A lock found free is no wait; one another process holds is, with the time it took, under
    the table it guards (what `stats` shows as contention).  The holder lets go 50 ms after the
    waiter is in its futex wait, seen in /proc (syscall 202 on x86-64), so the wait is at least
    that."""
    region = Region(4096)
    waits = memoryview(bytearray(16 * len(LOCK_TABLES))).cast("Q")
    region.count_waits(waits)
    region.lock(LOCK_INODES)
    region.unlock(LOCK_INODES)
    assert not any(waits)
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            region.lock(LOCK_INODES)
            os.write(w, b"x")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with open(f"/proc/{parent}/syscall") as f:
                    if f.read().split()[0] == "202":
                        break
                time.sleep(0.001)
            time.sleep(0.05)
            region.unlock(LOCK_INODES)
            code = 0
        finally:
            os._exit(code)
    os.read(r, 1)  # the child holds the lock now
    region.lock(LOCK_INODES)
    region.unlock(LOCK_INODES)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    os.close(r)
    os.close(w)
    assert LOCK_TABLES[0] == "inodes" and waits[0] == 1 and waits[1] >= 50_000_000, waits.tolist()
    assert not any(waits[2:]), waits.tolist()


def _handle_tables() -> tuple[HandleTable, HandleTable]:
    """Two workers' views (0 and 1) of one handle table of 4 slots a shard."""
    layout = Layout()
    space = HandleSpace(layout, 4 * HANDLE_SHARDS)
    counters = CounterSpace(layout)
    region = Region(layout.size)
    HandleTable.format(space, region)
    a, b = (HandleTable(space, region, w, WorkerCounters(counters, region, w).misc, FdBudget()) for w in (0, 1))
    return a, b


def test_handles_are_shared_and_released_everywhere(tmp_path: Path) -> None:
    a, b = _handle_tables()
    fd = os.open(tmp_path, os.O_RDONLY)
    fh = a.add(fd, 5, os.O_RDONLY | os.O_CREAT | os.O_TRUNC, 0)
    assert b.slot(fh, 1) == (5, os.O_RDONLY)  # kind FILE; flags less what the opener did already
    copy = os.open(tmp_path, os.O_RDONLY)
    b.keep(fh, copy)
    a.release(fh)
    b.sync()
    assert b.local(fh) is None
    try:
        os.fstat(copy)
        raise AssertionError("the released copy is still open")
    except OSError:
        pass
    assert a.add(os.open(tmp_path, os.O_RDONLY), 6, 0, 0) != fh  # same slot, new generation


def test_handle_shards_and_the_ring(tmp_path: Path) -> None:
    """Each worker allocates from its own shard, spilling into others when it is full; only a
    release that another worker may hold a copy of goes into the ring."""
    a, b = _handle_tables()
    per = a._space.per_shard
    mine = [a.add(os.open(tmp_path, os.O_RDONLY), 5, 0, 0) for _ in range(per + 1)]
    shards = [((fh & 0xFFFFFFFF) - 1) // per for fh in mine]
    assert shards[:per] == [0] * per and shards[per] != 0  # a full shard spills over
    assert ((b.add(os.open(tmp_path, os.O_RDONLY), 5, 0, 0) & 0xFFFFFFFF) - 1) // per in (1, shards[per] + 1)
    seq = a._ring_seq()
    a.release(mine[0])  # the opener's own release of an fh nobody copied
    assert a._ring_seq() == seq
    b.release(mine[1])  # released by another worker: the opener must close its fd
    assert a._ring_seq() == seq + 1
    a.sync()
    assert a.local(mine[1]) is None
    b.slot(mine[2], 1)
    a.release(mine[2])
    assert a._ring_seq() == seq + 2
    assert HandleTable.live(a._space, a._region) == per + 1 + 1 - 3


def test_a_full_handle_table_is_enfile(tmp_path: Path) -> None:
    a, _b = _handle_tables()
    fd = os.open(tmp_path, os.O_RDONLY)
    for _ in range(a._space.capacity):
        a.add(fd, 5, 0, 0)
    with pytest.raises(OSError) as e:
        a.add(fd, 5, 0, 0)
    assert e.value.errno == errno.ENFILE


def test_counters_and_percentiles() -> None:
    layout = Layout()
    space = CounterSpace(layout)
    region = Region(layout.size)
    c = WorkerCounters(space, region, 3)
    for ns in (1000, 2000, 3000, 1_000_000):
        c.record(3, ns, 0)
    c.record(3, 500, -2)
    assert c.ops[3 * 43] == 5 and c.ops[3 * 43 + 1] == 1 and c.errnos[2] == 1
    hist = c.ops[3 * 43 + 3 : 3 * 43 + 43].tolist()
    assert percentile(hist, 0.5) == 1536.0  # the middle one of five, 2000 ns, alone in [1024, 2048)
    assert percentile(hist, 0.99) == pytest.approx((1 << 19) * 1.95)  # 1 ms, alone in [2^19, 2^20) ns
    assert percentile([0] * 7 + [100], 0.5) == 96.0  # a hundred alike in [64, 128): mid-bucket, not 128
    assert percentile([0] * 8, 0.5) == 0.0


def test_a_worker_far_behind_the_release_ring_still_closes_its_copies(tmp_path: Path) -> None:
    a, b = _handle_tables()
    fh = a.add(os.open(tmp_path, os.O_RDONLY), 5, 0, 0)
    b.slot(fh, 1)
    copy = os.open(tmp_path, os.O_RDONLY)
    b.keep(fh, copy)
    a.release(fh)
    for _ in range(RING + 10):  # the ring wraps: b cannot read which fhs went
        other = a.add(os.open(tmp_path, os.O_RDONLY), 6, 0, 0)
        b.slot(other, 1)  # copied, so its release goes into the ring
        a.release(other)
    b.sync()
    assert b.local(fh) is None
    with pytest.raises(OSError):
        os.fstat(copy)


def test_kept_backing_ids_are_reused_bounded_and_closed_by_forget(tmp_path: Path, monkeypatch) -> None:
    """A read-only file's id outlives its last open for the same uid; another uid, a writable
    file, the bound, and the inode's FORGET each close it."""
    for name in ("r", "w", "x"):
        (tmp_path / name).write_text(name)
    space, counters, region = inode_space(tmp_path, 64)
    closed: list[int] = []
    a = inode_table(tmp_path, space, counters, region, 0, fds=1000, closed=closed)
    b = inode_table(tmp_path, space, counters, region, 1, fds=1000, closed=closed)
    pa, pb = a._passthrough, b._passthrough
    ids = iter(range(1, 100))

    def register() -> int:
        return next(ids)

    r, _ = a.lookup(a.root, b"r")
    assert pa.attach(r, 0, True, register) == (1, False)
    assert a.index.in_passthrough(r.nodeid)
    pb.release(r.nodeid)  # the last release, on another worker: kept
    assert not a.index.in_passthrough(r.nodeid) and closed == []
    assert pb.join(b.get(r.nodeid), 0)[1] == 1  # joined by a plain open of the same uid
    pb.release(r.nodeid)
    assert pb.attach(b.get(r.nodeid), 0, False, register) == (1, False)  # reused, even for a write open
    assert pa.attach(r, 1000, True, register) == (1, True)  # in use: another uid gets it for mmap only
    assert pa.join(r, 1000) == (0, 0)  # not uid 1000's to join
    pa.release(r.nodeid)
    pa.release(r.nodeid)
    assert pa.attach(r, 1000, True, register) == (2, False)  # idle: uid 1000 registers its own
    assert closed == [1]
    pa.release(r.nodeid)

    w, _ = a.lookup(a.root, b"w")
    assert pa.attach(w, 0, False, register) == (3, False)
    pa.release(w.nodeid)
    assert closed == [1, 3]  # a writable file's id ends with its last open

    monkeypatch.setattr("fastpass.fs.passthrough.IDLE_IDS", 0)
    x, _ = a.lookup(a.root, b"x")
    assert pa.attach(x, 0, True, register) == (4, False)
    pa.release(x.nodeid)
    assert closed == [1, 3, 4]  # past the bound: not kept

    a.forget(r.nodeid, 1)
    assert closed == [1, 3, 4, 2]  # the kept one goes with the inode, and its stripe's count with it
    assert U32.unpack_from(region.map, space.kept + (r.nodeid & 0xFFFFFFFF) % BACKING_STRIPES * 4)[0] == 0
