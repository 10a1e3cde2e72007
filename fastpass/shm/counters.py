"""Per-worker counters in shared memory, written without locks on the hot path.

Each worker owns one block and is its only writer, so a plain `+=` on a
u64 view of the block is safe; the supervisor reads all blocks to answer
`fastpass stats` and may see a count a request ahead of its latency, which
no figure it reports depends on.  A block outlives its process: a
restarted worker takes over its predecessor's block and goes on counting.

Per opcode: requests, errors, total latency (ns) and a histogram of
latency by powers of two of nanoseconds, from which the percentiles come.
Measured: a `record()` costs about 0.4 us.
"""

from __future__ import annotations

from fastpass.config import MAX_WORKERS as MAX_WORKER_COUNT
from fastpass.shm.region import LOCK_TABLES, Layout, Region

MAX_WORKERS = MAX_WORKER_COUNT + 1  # counter blocks: one per worker index, then the watcher's
WATCHER = MAX_WORKERS - 1  # the watcher's block; workers take those below
OPCODES = 64  # every opcode the kernel sends is below this; the rest count under 0
BUCKETS = 40  # latency < 2**39 ns (9 minutes)
ERRNOS = 256
OP_STRIDE = 3 + BUCKETS  # count, errors, total_ns, histogram
# misc fields of a block
PID, STARTED_NS, FOREIGN_NODES, FOREIGN_FILES, OPENS_PASSTHROUGH, OPENS_USERSPACE = 0, 1, 2, 3, 4, 5
CACHE_HITS, CACHE_MISSES, CACHE_EVICTIONS = 6, 7, 8  # the shared attribute cache, as this process used it
INVALIDATIONS = 9  # notifications the watcher sent the kernel (the watcher's block only)
IO_PATH = 10  # how the worker does its I/O: one of IO_NAMES' indices (0 before it says)
PEAK_IN_FLIGHT = 11  # the most requests the worker has had in flight at once (ring path)
RING_CALLS = 12  # backing calls the worker made on its io_uring
IO_NAMES = ("", "plain", "uring")
TRANSPORT = 13  # where the worker's requests come from: one of TRANSPORT_NAMES' indices
TRANSPORT_NAMES = ("", "dev", "uring")  # /dev/fuse alone; FUSE-over-io_uring entries too
BACKING_REGISTERED, BACKING_CLOSED = 14, 15  # passthrough backing ids this process registered, closed
REPLAYED = 16  # requests a dead predecessor had read, answered by this worker (and its successors)
PRUNED = 17  # nodeids this worker asked the kernel to forget (FUSE_NOTIFY_PRUNE)
# Per table of LOCK_TABLES, a pair: times this process found one of its locks held by another
# process, and the ns it waited (`Region.count_waits`)
LOCK_WAITS = 18
MISC = LOCK_WAITS + 2 * len(LOCK_TABLES)
BLOCK = OPCODES * OP_STRIDE + ERRNOS + MISC  # u64s per worker


class CounterSpace:
    def __init__(self, layout: Layout):
        self.offset = layout.take(BLOCK * 8 * MAX_WORKERS)


class WorkerCounters:
    """One worker's block as three u64 views: per opcode, per errno, misc."""

    def __init__(self, space: CounterSpace, region: Region, index: int):
        start = space.offset + index * BLOCK * 8
        block = region.view[start : start + BLOCK * 8].cast("Q")
        self.ops = block[: OPCODES * OP_STRIDE]
        self.errnos = block[OPCODES * OP_STRIDE : OPCODES * OP_STRIDE + ERRNOS]
        self.misc = block[OPCODES * OP_STRIDE + ERRNOS :]

    def record(self, opcode: int, ns: int, error: int) -> None:
        """Count one answered request: `error` is the negative errno or 0."""
        ops = self.ops
        base = (opcode if opcode < OPCODES else 0) * OP_STRIDE
        ops[base] += 1
        ops[base + 2] += ns
        ops[base + 3 + min(ns.bit_length(), BUCKETS - 1)] += 1
        if error:
            ops[base + 1] += 1
            self.errnos[min(-error, ERRNOS - 1)] += 1


def percentile(histogram: list[int], q: float) -> float:
    """The q-quantile (0..1) of a power-of-two histogram, in ns: bucket b holds the times of b bits,
    [2^(b-1), 2^b), and the quantile is placed within its bucket as if that bucket's times were
    spread evenly (the upper edge alone read as twice the mean where every time is alike)."""
    total = sum(histogram)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for bucket, n in enumerate(histogram):
        if n and seen + n >= rank:
            low = (1 << bucket) >> 1
            return low + (low or 1) * (rank - seen) / n
        seen += n
    return float(1 << (len(histogram) - 1))
