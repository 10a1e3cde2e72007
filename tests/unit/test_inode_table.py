"""The inode table without a mount: it grows past its first size, across processes forked before
the growth, its index stays a map through inserts, splits and removals, and near its bound (or a
uid's share) it picks cold inodes to prune before it answers ENFILE."""

from __future__ import annotations

import errno
import os
import pickle
import random
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpass.fs import inode_index
from fastpass.fs.inode_index import prune_batch
from fastpass.fs.slots import FIRST_SLOTS, SLOT, SLOT_SIZE, UIDS, SlotReader
from fastpass.shm.region import LOCK_INODES
from tests.tables import close_all, inode_space, inode_table
from tests.users import wait_child


@pytest.fixture(autouse=True)
def _close_tables() -> Iterator[None]:
    yield
    close_all()


def _files(tmp_path: Path, n: int) -> list[bytes]:
    names = [f"f{i}".encode() for i in range(n)]
    for name in names:
        (tmp_path / name.decode()).touch()
    return names


def _in_child(fn: Callable[[], object]) -> object:
    """fn() in a forked child (which has the parent's mappings as of now); its result comes back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            data = pickle.dumps(fn())
            while data:
                data = data[os.write(w, data) :]
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    wait_child(pid, float("inf"), "child")
    return pickle.loads(data)


def test_a_table_grown_by_one_process_is_mapped_lazily_by_the_others(tmp_path: Path) -> None:
    """Workers forked while the table had its first size: one fills it four times over, another
    resolves every nodeid and finds every key, and takes more slots itself."""
    names = _files(tmp_path, 4 * FIRST_SLOTS)
    space, counters, region = inode_space(tmp_path, 0)
    a = inode_table(tmp_path, space, counters, region, 0)
    b = inode_table(tmp_path, space, counters, region, 1)
    assert a.index._mapped == b.index._mapped == FIRST_SLOTS
    made = {name: a.lookup(a.root, name)[0] for name in names[: 3 * FIRST_SLOTS]}
    assert space.slots(region) == 4 * FIRST_SLOTS and space.live(region) == 3 * FIRST_SLOTS + 1
    assert b.index._mapped == FIRST_SLOTS  # b has not met the new slots yet

    def in_b() -> tuple[list[int], list[int], dict[bytes, int]]:
        views = [b.get(inode.nodeid) for inode in made.values()]  # maps the grown table on the way
        found = [b.index.nodeid_of(view.key) for view in views]
        more = {name: b.lookup(b.root, name)[0].nodeid for name in names[3 * FIRST_SLOTS :]}
        return [v.key[1] for v in views], found, more

    inos, found, more = _in_child(in_b)
    assert inos == [inode.key[1] for inode in made.values()]
    assert found == [inode.nodeid for inode in made.values()]
    assert space.live(region) == 4 * FIRST_SLOTS + 1 and space.slots(region) == 8 * FIRST_SLOTS
    for name, nodeid in more.items():  # what the child made, the parent (a) resolves
        assert a.get(nodeid).key[1] == os.stat(tmp_path / name.decode()).st_ino
    assert a.lookup(a.root, names[-1])[0].nodeid == more[names[-1]]  # one slot per inode, whoever made it
    reader = SlotReader(space, region)  # the watcher's view
    assert reader.nodeid_of(made[names[0]].key) == made[names[0]].nodeid


def test_forget_frees_every_slot_and_they_come_back(tmp_path: Path) -> None:
    names = _files(tmp_path, 2 * FIRST_SLOTS)
    space, counters, region = inode_space(tmp_path, 0)
    a = inode_table(tmp_path, space, counters, region, 0)
    first = [a.lookup(a.root, name)[0].nodeid for name in names]
    grown = space.slots(region)
    for nodeid in first:
        a.forget(nodeid, 1)
    assert space.live(region) == 1
    again = [a.lookup(a.root, name)[0].nodeid for name in names]
    assert space.slots(region) == grown  # freed slots were taken again, no growth
    assert {n & 0xFFFFFFFF for n in again} == {n & 0xFFFFFFFF for n in first}
    assert all(n >> 32 == 1 for n in again)  # each with a new generation


def test_a_file_changed_outside_gets_a_new_nodeid_once_no_open_holds_it(tmp_path: Path) -> None:
    """The writeback cache's rule (the module's comment): a marked regular file keeps its nodeid while
    an open holds it, on every worker; the first lookup after its last release retires the slot,
    which stays live for the kernel's old inode until its FORGET; a directory's mark is dropped."""
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    space, counters, region = inode_space(tmp_path, 0)
    a = inode_table(tmp_path, space, counters, region, 0)
    b = inode_table(tmp_path, space, counters, region, 1)
    old = a.lookup(a.root, b"f")[0].nodeid
    a.index.opened(old, 1)
    SlotReader(space, region).outdate(old)
    assert a.index.outdated(old)
    assert a.lookup(a.root, b"f")[0].nodeid == old and b.lookup(b.root, b"f")[0].nodeid == old
    a.index.opened(old, -1)
    new = b.lookup(b.root, b"f")[0].nodeid
    assert new != old and not a.index.outdated(new)
    assert a.lookup(a.root, b"f")[0].nodeid == new  # a's fd for the old slot does not bring it back
    assert SlotReader(space, region).nodeid_of(a.get(new).key) == new
    assert space.live(region) == 3
    a.forget(old, 3)
    assert space.live(region) == 2 and b.lookup(b.root, b"f")[0].nodeid == new
    d = a.lookup(a.root, b"d")[0].nodeid
    SlotReader(space, region).outdate(d)
    assert a.lookup(a.root, b"d")[0].nodeid == d and not a.index.outdated(d)


class _DiesAtHeader:
    """HEADER, except that writing it kills the process: a worker SIGKILLed inside the inode lock,
    its slot published and its bucket head written, the table's header not yet."""

    def __init__(self, real: struct.Struct):
        self.real, self.size = real, real.size

    def unpack_from(self, *args: object) -> tuple:
        return self.real.unpack_from(*args)

    def pack_into(self, *args: object) -> None:
        os._exit(0)


def test_a_worker_dead_inside_the_inode_lock_leaves_the_table_as_before(tmp_path: Path, monkeypatch,
                                                                         caplog) -> None:  # fmt: skip
    """The next locker undoes the dead section's writes (region.py's undo log): the slot it took is
    free again, and two names the table then meets get two slots, each found under its own key."""
    names = _files(tmp_path, 3)
    space, counters, region = inode_space(tmp_path, 0)
    a = inode_table(tmp_path, space, counters, region, 0)
    first = a.lookup(a.root, names[0])[0]
    for i in range(1000):  # enough that the bucket the dead section wrote holds others
        (tmp_path / f"g{i}").touch()
    many = [a.lookup(a.root, f"g{i}".encode())[0] for i in range(1000)]

    def dies() -> None:
        monkeypatch.setattr(inode_index, "HEADER", _DiesAtHeader(inode_index.HEADER))
        b = inode_table(tmp_path, space, counters, region, 1)
        b.lookup(b.root, names[1])

    pid = os.fork()
    if pid == 0:
        try:
            dies()
        finally:
            os._exit(1)
    wait_child(pid, time.monotonic() + 30, "child")
    second = a.lookup(a.root, names[2])[0]  # takes the lock the child died holding
    third = a.lookup(a.root, names[1])[0]
    assert "writes undone" in caplog.text
    assert len({first.nodeid, second.nodeid, third.nodeid}) == 3
    reader = SlotReader(space, region)
    for inode in (first, second, third, *many):
        assert reader.nodeid_of(inode.key) == inode.nodeid
    assert space.live(region) == 1004
    for inode in (first, second, third, *many):
        a.forget(inode.nodeid, 1)
    assert space.live(region) == 1


def _index_against_a_dict(tmp: Path, ops: list[tuple[int, int]]) -> int:
    """Synthetic keys through the table's own insert and free (kind 0: free, else insert);
    every key must then be found in its slot.  Returns the table's size in slots."""
    space, counters, region = inode_space(tmp, 0)
    a = inode_table(tmp, space, counters, region, 0)
    index = a.index
    model: dict[tuple[int, int], tuple[int, int]] = {}
    for kind, n in ops:
        key = (7, n * 4096)
        if kind and key not in model:
            model[key] = index._new_slot(index._find(key, *index._catch_up()[1:3])[0], key, -1, None, 0)
        elif not kind and key in model:
            slot, gen = model.pop(key)
            index._free(slot, gen)
    assert space.live(region) == len(model) + 1
    geometry = index._catch_up()[1:3]
    for key, (slot, _gen) in model.items():
        assert index._find(key, *geometry)[2] == slot
    assert index._find((7, 1), *geometry)[2] == 0
    assert index._find(a.root.key, *geometry)[2] == 1
    return space.slots(region)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4999)), max_size=3000))
def test_index_matches_a_dict_through_inserts_and_removals(tmp_path_factory, ops) -> None:
    _index_against_a_dict(tmp_path_factory.mktemp("idx"), ops)


def test_index_matches_a_dict_through_many_splits(tmp_path: Path) -> None:
    """20,000 operations, three inserts to a removal: the table doubles four times and the index
    splits thousands of buckets under the keys."""
    rng = random.Random(22)
    ops = [(rng.randrange(4), rng.randrange(20000)) for _ in range(20000)]
    assert _index_against_a_dict(tmp_path, ops) >= 8 * FIRST_SLOTS


def test_near_the_bound_cold_inodes_are_pruned_then_enfile(tmp_path: Path) -> None:
    """From a batch below the bound the table names cold nodeids to prune: not the root, not an
    inode looked up again since the hand passed (until the hand passes again), not one with a
    passthrough open.  At the bound a new inode is ENFILE; after FORGETs it is taken again."""
    bound = 64
    batch = prune_batch(bound)
    names = _files(tmp_path, bound + 8)
    space, counters, region = inode_space(tmp_path, bound)
    asked: list[list[int]] = []
    a = inode_table(tmp_path, space, counters, region, 0, prune=asked.append, closed=[])
    inodes = [a.lookup(a.root, name)[0] for name in names[: bound - batch - 1]]
    assert asked == [] and space.live(region) == bound - batch
    hot, busy = inodes[0], inodes[1]
    a.lookup(a.root, names[0])  # looked up again: touched
    a._passthrough.attach(busy, 0, False, lambda: 5)  # a passthrough open
    a.lookup(a.root, names[bound - batch - 1])  # the first slot past the mark: a prune
    assert len(asked) == 1
    pruned = set(asked[0])
    assert hot.nodeid not in pruned and busy.nodeid not in pruned and 1 not in pruned
    assert pruned == {i.nodeid for i in inodes[2 : 2 + batch]}  # the coldest first: oldest slots, in order
    while space.live(region) < bound:
        a.lookup(a.root, names[space.live(region) - 1])
    with pytest.raises(OSError) as info:
        a.lookup(a.root, names[-1])
    assert info.value.errno == errno.ENFILE
    assert space.live(region) == bound
    for nodeid in asked[0]:  # the kernel forgets what it could drop
        a.forget(nodeid, 1)
    assert a.lookup(a.root, names[-1])[0].key[1] == os.stat(tmp_path / names[-1].decode()).st_ino


def test_a_uid_at_its_share_is_enfile_and_others_are_not(tmp_path: Path, monkeypatch) -> None:
    """Slots are charged to the uid the thread acts as; that uid, at its share, gets ENFILE
    after its own cold inodes were named for pruning; another uid and root still get slots."""
    bound, share = 400, 100
    names = _files(tmp_path, 260)
    space, counters, region = inode_space(tmp_path, bound)
    asked: list[list[int]] = []
    a = inode_table(tmp_path, space, counters, region, 0, share, prune=asked.append)
    acting = {"uid": 1000}
    monkeypatch.setattr("fastpass.fs.inode_index._linux.fsuid_now", lambda: acting["uid"])
    held = []
    with pytest.raises(OSError) as info:
        for name in names:
            held.append(a.lookup(a.root, name)[0])
    assert info.value.errno == errno.ENFILE and "uid 1000" in info.value.strerror
    assert len(held) == share
    by_1000 = {i.nodeid for i in held}
    assert asked and all(set(batch) <= by_1000 for batch in asked)  # only its own inodes
    acting["uid"] = 1001
    other = a.lookup(a.root, names[share])[0]
    acting["uid"] = 0
    mine = a.lookup(a.root, names[share + 1])[0]
    assert other.nodeid not in by_1000 and mine.nodeid not in by_1000
    acting["uid"] = 1000
    a.lookup(a.root, names[0])  # an inode it has already: no new slot, no ENFILE
    a.forget(held[5].nodeid, 1)
    assert a.lookup(a.root, names[share + 2])[0].key[1] == os.stat(tmp_path / names[share + 2].decode()).st_ino


def test_share_cells_are_claimed_once_and_reused_when_empty(tmp_path: Path) -> None:
    """A uid keeps its cell; when every cell counts slots a new uid is not counted; a cell whose
    uid holds no slot any more is claimed by the next new uid."""
    space, counters, region = inode_space(tmp_path, 1000)
    a = inode_table(tmp_path, space, counters, region, 0, 100)

    def count(cell: int, n: int) -> None:
        struct.pack_into("<I", region.map, space.cells + cell * 16 + 8, n)

    region.lock(LOCK_INODES)
    try:
        cells = []
        for uid in range(UIDS - 1):
            cells.append(a.index._cell_of(uid))
            count(cells[-1], 1)
        assert 0 not in cells and len(set(cells)) == UIDS - 1
        assert [a.index._cell_of(uid) for uid in range(UIDS - 1)] == cells  # found again
        assert a.index._cell_of(99999) == 0  # every cell counts slots: not counted
        count(cells[7], 0)  # uid 7 holds no slot any more
        assert a.index._cell_of(99999) == cells[7]
        count(cells[7], 1)
        assert a.index._cell_of(7) == 0 and a.index._cell_of(99999) == cells[7]
    finally:
        region.unlock(LOCK_INODES)


def test_a_slot_is_200_bytes_and_the_table_starts_small() -> None:
    assert SLOT_SIZE == 200
    assert SLOT.format == "<IIqQQIIiiIIiBBHIBB2x128s"  # the restart format: a new supervisor maps the old slots
    assert FIRST_SLOTS * SLOT_SIZE <= 256 * 1024
