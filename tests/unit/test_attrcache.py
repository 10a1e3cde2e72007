"""The shared attribute cache without a mount: freshness rules, eviction, atime, and readers in other processes."""

from __future__ import annotations

import os
import struct
import time

import pytest

from fastpass.fs.attrcache import NO_CAPS, SLOT_SIZE, AttrCache, AttrSpace, atime_policy
from fastpass.kernel import encode
from fastpass.kernel.abi import ATTR
from fastpass.shm.counters import CACHE_EVICTIONS, CACHE_HITS, CACHE_MISSES, CounterSpace, WorkerCounters
from fastpass.shm.region import Layout, Region

NODE = 5 << 32 | 7  # generation 5, inode slot 7


def _attr(size: int, atime: int = 0, mtime: int = 0, ctime: int = 0) -> bytes:
    return ATTR.pack(1, size, 0, atime, mtime, ctime, 0, 0, 0, 0o100644, 1, 0, 0, 0, 4096, 0)


def _caches(size: int = 8, revalidate: float = 0.0, atime: str = "relatime") -> tuple[AttrCache, AttrCache]:
    """Two processes' views (by their own counter blocks) of one cache."""
    layout = Layout()
    space = AttrSpace(layout, size)
    counters = CounterSpace(layout)
    region = Region(layout.size)
    return tuple(AttrCache(space, region, WorkerCounters(counters, region, w).misc, revalidate, atime)
                 for w in (0, 1))  # type: ignore[return-value]  # fmt: skip


def test_a_fill_is_seen_by_every_worker() -> None:
    a, b = _caches()
    assert b.get(NODE) is None
    a.put(NODE, time.monotonic_ns(), _attr(100))
    assert b.get(NODE) == _attr(100)
    assert (b._misc[CACHE_HITS], b._misc[CACHE_MISSES]) == (1, 1)


def test_a_fill_begun_before_a_change_is_refused() -> None:
    """A getattr that stat'ed before another worker's write must not put the old size back."""
    a, b = _caches()
    before = time.monotonic_ns()  # b's stat starts
    a.put(NODE, time.monotonic_ns(), _attr(200))  # a writes, stats and refreshes
    b.put(NODE, before, _attr(100))  # b's stale result arrives late
    assert a.get(NODE) == _attr(200)


def test_changed_drops_the_entry_and_refuses_older_fills() -> None:
    a, b = _caches()
    t0 = time.monotonic_ns()
    a.put(NODE, t0, _attr(1))
    b.changed(NODE)
    assert a.get(NODE) is None
    a.put(NODE, t0, _attr(1))  # begun before the change: refused
    assert a.get(NODE) is None
    a.put(NODE, time.monotonic_ns(), _attr(2))
    assert a.get(NODE) == _attr(2)


def test_another_nodeid_evicts_and_is_counted() -> None:
    a, _ = _caches(size=8)
    other = 1 << 32 | 15  # slot 15: the same cache slot as 7 in 8 entries
    a.put(NODE, time.monotonic_ns(), _attr(1))
    a.put(other, time.monotonic_ns(), _attr(2))
    assert a.get(NODE) is None and a.get(other) == _attr(2)
    assert a._misc[CACHE_EVICTIONS] == 1


def test_changed_of_a_colliding_nodeid_keeps_the_entry_but_guards_the_slot() -> None:
    a, _ = _caches(size=8)
    other = 1 << 32 | 15
    t0 = time.monotonic_ns()
    a.put(NODE, t0, _attr(1))
    a.changed(other)
    assert a.get(NODE) == _attr(1)
    a.put(NODE, t0, _attr(9))  # older than the mark: refused, even for the other nodeid
    assert a.get(NODE) == _attr(1)


def test_a_reused_slot_generation_is_a_miss() -> None:
    a, _ = _caches()
    a.put(NODE, time.monotonic_ns(), _attr(1))
    assert a.get(6 << 32 | 7) is None


def test_revalidate_expires_entries() -> None:
    a, _ = _caches(revalidate=0.05)
    a.put(NODE, time.monotonic_ns(), _attr(1))
    assert a.get(NODE) == _attr(1)
    time.sleep(0.06)
    assert a.get(NODE) is None


@pytest.mark.parametrize("policy, atime, mtime, dropped", [
    ("relatime", 10, 20, True),  # atime not after mtime: the read moves it
    ("relatime", int(time.time()), 20, False),  # recent and after mtime/ctime: it stays
    ("relatime", int(time.time()) - 2 * 86400, 20, True),  # a day old: it moves
    ("strictatime", int(time.time()), 20, True),
    ("noatime", 10, 20, False),
])  # fmt: skip
def test_reads_drop_entries_whose_atime_they_move(policy: str, atime: int, mtime: int, dropped: bool) -> None:
    a, _ = _caches(atime=policy)
    a.put(NODE, time.monotonic_ns(), _attr(1, atime=atime, mtime=mtime, ctime=mtime))
    a.read(NODE)
    assert (a.get(NODE) is None) is dropped


def test_a_torn_read_is_a_miss() -> None:
    """A slot caught mid-write (odd sequence) is never returned."""
    a, _ = _caches()
    a.put(NODE, time.monotonic_ns(), _attr(1))
    off = a._at(NODE)
    seq = struct.unpack_from("<Q", a._map, off)[0]
    struct.pack_into("<Q", a._map, off, seq + 1)
    assert a.get(NODE) is None
    struct.pack_into("<Q", a._map, off, seq)
    assert a.get(NODE) == _attr(1)


def test_readers_in_another_process_never_see_a_mix() -> None:
    """A forked reader hammers the slot while this process rewrites it: every hit is one whole value."""
    a, b = _caches()
    values = [_attr(size) for size in (1, 2, 3)]
    a.put(NODE, time.monotonic_ns(), values[0])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        bad = hits = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            got = b.get(NODE)
            if got is not None:
                hits += 1
                bad += got not in values
        os.write(w, f"{bad} {hits}".encode())
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 0.5
    i = 0
    while time.monotonic() < deadline:
        a.put(NODE, time.monotonic_ns(), values[i % 3])
        i += 1
    with os.fdopen(r) as f:
        bad, hits = map(int, f.read().split())
    os.waitpid(pid, 0)
    assert bad == 0 and hits > 100


def test_slots_hold_a_fuse_attr() -> None:
    assert ATTR.size + 32 <= SLOT_SIZE
    st = os.stat("/")
    a, _ = _caches()
    a.put(NODE, time.monotonic_ns(), encode.attr(st))
    assert ATTR.unpack(a.get(NODE))[0] == st.st_ino  # type: ignore[arg-type]


def test_atime_policy_of_this_machine_roots() -> None:
    assert atime_policy(os.open("/", os.O_PATH)) in ("relatime", "strictatime", "noatime")


def test_flags_hold_as_long_as_the_entry() -> None:
    """NO_CAPS goes in with a fill and is seen by every worker; a change, a fill without it, another
    nodeid's fill and expiry all take it away."""
    a, b = _caches(revalidate=0.05)
    assert b.flags(NODE) == 0
    a.put(NODE, time.monotonic_ns(), _attr(1), NO_CAPS)
    assert b.flags(NODE) == NO_CAPS and b.get(NODE) == _attr(1)
    b.changed(NODE)
    assert a.flags(NODE) == 0
    a.put(NODE, time.monotonic_ns(), _attr(2), NO_CAPS)
    a.put(NODE, time.monotonic_ns(), _attr(3))  # a getattr's fill says nothing of xattrs
    assert b.flags(NODE) == 0
    a.put(NODE, time.monotonic_ns(), _attr(4), NO_CAPS)
    a.put(NODE + 8, time.monotonic_ns(), _attr(5))  # the same slot (size 8)
    assert b.flags(NODE) == 0
    a.put(NODE, time.monotonic_ns(), _attr(6), NO_CAPS)
    time.sleep(0.06)
    assert b.flags(NODE) == 0  # expired with the entry
