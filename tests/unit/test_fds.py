"""A worker's fd budget without a mount: the limit raised, caches giving way to open files in
order, copies closed only once no request may use them, spares, and per-uid shares."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import pytest

from fastpass.fs import fds as fds_module
from fastpass.fs.fds import FLOOR, FdBudget, raise_limit
from fastpass.fs.handles import FILE, HandleSpace, HandleTable
from fastpass.fs.inode_index import InodeIndex
from fastpass.fs.inodes import InodeTable
from fastpass.fs.slots import InodeSpace
from fastpass.shm.counters import CounterSpace, WorkerCounters
from fastpass.shm.region import LOCK_SHARES, Layout, Region
from fastpass.shm.shares import CELLS, Shares, ShareSpace


def test_the_limit_is_raised_as_far_as_the_process_may() -> None:
    """To fs.nr_open with CAP_SYS_RESOURCE, else to the hard limit (in a child: limits are per process)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1000))
            limit, nr_open = raise_limit()
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit
            if limit == 1000:  # the fallback: raising the hard limit is not allowed here
                with pytest.raises(ValueError):
                    resource.setrlimit(resource.RLIMIT_NOFILE, (nr_open, nr_open))
            else:
                assert limit == nr_open
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _tables(tmp_path: Path, budget: FdBudget) -> tuple[InodeTable, HandleTable, HandleTable]:
    """Worker 0's inode and handle tables on `budget`, and worker 1's handle table (its own budget)."""
    layout = Layout()
    inodes = InodeSpace(layout, 1024)
    handles = HandleSpace(layout, 1024)
    counters = CounterSpace(layout)
    region = Region(layout.size)
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    InodeIndex.format(inodes, region, root)
    misc = WorkerCounters(counters, region, 0).misc
    table = InodeTable(InodeIndex(inodes, region, 0, misc), os.open(tmp_path, os.O_PATH), budget)
    return (table, HandleTable(handles, region, 0, misc, budget),
            HandleTable(handles, region, 1, WorkerCounters(counters, region, 1).misc, FdBudget()))  # fmt: skip


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_paths_give_way_first_then_copies_and_opens_are_refused_last(tmp_path: Path) -> None:
    for i in range(300):
        (tmp_path / f"f{i}").write_text("x")
    budget = FdBudget(limit=300, io_depth=1)
    room = budget.room
    inodes, mine, theirs = _tables(tmp_path, budget)
    if not inodes.reopen:
        pytest.skip("open_by_handle_at is not allowed here: O_PATH fds are pinned, never given back")
    for i in range(300):
        inodes.lookup(inodes.root, f"f{i}".encode())
    assert len(budget.paths) == room  # the least recently used went
    own = [mine.add(os.open(tmp_path / f"f{i}", os.O_RDONLY), 5, 0, 0) for i in range(100)]
    assert len(budget.paths) == room - 100
    # A copy of another worker's fh: kept, and given back after the paths reach their floor.
    copies = []
    for i in range(room):
        fh = theirs.add(None, 5, 0, 0)
        fd = os.open(tmp_path / f"f{i}", os.O_RDONLY)
        mine.keep(fh, fd)
        copies.append(fd)
    assert len(budget.paths) == FLOOR
    assert budget.fixed + len(budget.paths) + len(budget.files) == room
    assert all(_is_open(fd) for fd in copies)  # given back, but closed only by `reap`
    budget.busy_since = lambda: 0  # a request in flight since before: they may be in use
    budget.reap()
    assert all(_is_open(fd) for fd in copies)
    budget.busy_since = lambda: None
    budget.reap()
    assert sum(map(_is_open, copies)) == room - FLOOR - 100
    # Own fds take what the caches give, up to their floors.
    while len(own) < room - 2 * FLOOR:
        own.append(mine.add(os.open(tmp_path / "f0", os.O_RDONLY), 5, 0, 0))
    fd = os.open(tmp_path / "f0", os.O_RDONLY)
    with pytest.raises(OSError) as e:
        mine.add(fd, 5, 0, 0)
    assert e.value.errno == errno.EMFILE
    assert mine.add(None, 5, 0, 0)  # an open that keeps no fd is no fd's business
    mine.release(own.pop())
    mine.add(fd, 5, 0, 0)


def test_a_spare_fd_makes_room_for_an_open_that_must_not_fail(monkeypatch) -> None:
    budget = FdBudget(limit=1000)
    failures = [errno.EMFILE, errno.ENFILE]

    def opener() -> int:
        if failures:
            raise OSError(failures.pop(), "short")
        return 7

    assert budget.opening(opener) == 7
    assert len(budget._spares) == fds_module.SPARES - 2
    budget.reap()
    assert len(budget._spares) == fds_module.SPARES
    with pytest.raises(OSError) as e:
        budget.opening(lambda: (_ for _ in ()).throw(OSError(errno.EACCES, "no")))
    assert e.value.errno == errno.EACCES and len(budget._spares) == fds_module.SPARES


def test_a_handle_released_gives_back_its_uid_share(tmp_path: Path) -> None:
    layout = Layout()
    space = HandleSpace(layout, 1024)
    counters = CounterSpace(layout)
    region = Region(layout.size)
    table = HandleTable(space, region, 0, WorkerCounters(counters, region, 0).misc, FdBudget(), share=3)
    fhs = [table.add(None, 5, 0, 1000) for _ in range(3)]
    with pytest.raises(OSError) as e:
        table.add(None, 5, 0, 1000)
    assert e.value.errno == errno.EMFILE
    assert table.add(None, 5, 0, 0)  # root's share is its own
    table.release(fhs[0])
    assert table.slot(table.add(None, 5, 0, 1000), FILE) == (5, 0)


def test_shares_count_per_uid_and_free_their_cells() -> None:
    layout = Layout()
    space = ShareSpace(layout)
    region = Region(layout.size)
    shares = Shares(space, region, LOCK_SHARES, 2)
    a, b, c = 5, 5 + CELLS, 5 + 2 * CELLS  # one home cell: a probe run of three
    for uid in (a, b, c):
        assert shares.charge(uid) and shares.charge(uid)
        assert not shares.charge(uid)
    shares.refund(a)
    shares.refund(a)  # a's cell empties; b and c shift back into reach
    assert (shares.held(a), shares.held(b), shares.held(c)) == (0, 2, 2)
    shares.refund(b)
    assert shares.charge(b) and not shares.charge(b)
    assert shares.charge(a)
