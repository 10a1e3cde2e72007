"""fastpass.transport.entries without a mount: how queues are divided among workers, the CPU list, and
the layout of the shared entries (what the kernel gets in each REGISTER's iovec)."""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os

import pytest

from fastpass.kernel import abi
from fastpass.transport.entries import PAGE, STAGE, Entries, cpu_count, queues_of


@pytest.mark.parametrize(("text", "count"), [("0", 1), ("0-1\n", 2), ("0-3,8-11", 8), ("0,2,4-5", 4)])
def test_cpu_count(text: str, count: int) -> None:
    assert cpu_count(text) == count


@pytest.mark.parametrize("queues", [1, 2, 3, 16])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 17])
def test_every_queue_has_a_worker_and_every_worker_a_queue(queues: int, workers: int) -> None:
    shares = [queues_of(w, workers, queues) for w in range(workers)]
    assert all(shares), "a worker without a queue would serve /dev/fuse alone"
    served = sorted(q for share in shares for q in share)
    if workers <= queues:
        assert served == list(range(queues))  # each queue once
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # evenly
    else:
        assert set(served) == set(range(queues))
        assert max(served.count(q) for q in range(queues)) - min(served.count(q) for q in range(queues)) <= 1


def test_the_fuse_uring_abi() -> None:
    assert abi.URING_CMD_REQ.size == 24  # flags, commit_id, qid, padding: 24 of the 80-byte area
    assert abi.URING_HEADER_SIZE == abi.URING_OP_IN + abi.URING_OP_IN_SIZE + 32  # in_out, op_in, ring_ent_in_out
    assert abi.URING_PAYLOAD_SZ == 256 + 16
    assert STAGE == abi.IN_HEADER.size + abi.URING_OP_IN_SIZE <= PAGE - abi.URING_HEADER_SIZE


def test_entries_layout() -> None:
    entries = Entries(queues=3, workers=2, depth=2, payload=(1 << 20) + 100)
    assert entries.payload % PAGE == 0 and entries.payload >= (1 << 20) + 100
    base = ctypes.addressof(ctypes.c_char.from_buffer(entries.map))
    seen: list[tuple[int, int]] = []
    for index in range(2):
        share = entries.share(index)
        assert share.qids == [q for q in queues_of(index, 2, 3) for _ in range(2)]
        assert share.cpus() == sorted(set(share.qids))
        region = ctypes.addressof(ctypes.c_char.from_buffer(share.region))
        for i, (h, p) in enumerate(zip(share.headers, share.payloads)):
            assert h % PAGE == 0 and p == h + PAGE  # the staging area fits between header and payload
            assert region <= base + h and base + p + entries.payload <= region + share.region.nbytes
            assert list(share.iovs[i]) == [base + h, abi.URING_HEADER_SIZE, base + p, entries.payload]
            assert share.iov_addrs[i] == ctypes.addressof(share.iovs[i])
            assert share.payload_addrs[i] == base + p and share.areas[i].nbytes == entries.payload
            seen.append((h, p + entries.payload))
        share.counts[share.qids[0]] += 5
    seen.sort()
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(seen)), "entries overlap"
    assert entries.requests_per_queue() == [5, 5, 0]  # worker 0 counted on queue 0, worker 1 on queue 1


def test_entries_are_shared_with_a_forked_worker() -> None:
    """A replacement worker is forked from the supervisor: it sees the entries at the same
    addresses, with what the dead worker's requests left in them."""
    entries = Entries(queues=2, workers=1, depth=1, payload=mmap.PAGESIZE)
    share = entries.share(0)
    pid = os.fork()
    if pid == 0:
        share.view[share.headers[0] + 8 : share.headers[0] + 16] = (1234).to_bytes(8, "little")
        os._exit(0)
    os.waitpid(pid, 0)
    assert int.from_bytes(share.view[share.headers[0] + 8 : share.headers[0] + 16], "little") == 1234
