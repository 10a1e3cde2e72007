"""What outlives a worker: its device clone, its request buffers and its journal.

The supervisor makes one seat per worker index before that index's first fork and keeps
it for the life of the mount; every worker that sits at the index (the first one and each
replacement) inherits it.  Because the supervisor holds the clone, the kernel keeps the
requests a killed worker had read (they stay in the clone's processing list instead of
ending with ECONNABORTED), and because the buffers and the journal are shared mappings
made before the fork, the replacement finds those requests and what was done with them,
and answers each on the same clone (`fastpass.shm.journal`).
"""

from __future__ import annotations

from fastpass.shm.journal import Journal, unique_at
from fastpass.transport.dev import BufferPool


class Seat:
    def __init__(self, devfd: int, depth: int = 1, entries: int = 0, attach: tuple[int, int] | None = None):
        """`devfd`: this index's clone of the device; `depth` request buffers; `entries`: how
        many FUSE-over-io_uring entries its workers serve (their records follow the buffers');
        `attach`: the buffers' and the journal's memfds, handed over (`fastpass.restart`)."""
        self.devfd = devfd
        self.pool = BufferPool(depth, None if attach is None else attach[0])
        self.journal = Journal(depth + entries, None if attach is None else attach[1])

    def unanswered(self) -> bool:
        """Whether a request read into one of its buffers still waits for its answer (a worker
        stopped amid it)."""
        return any(self.journal.pending(slot, unique_at(buf)) for slot, buf in enumerate(self.pool.bufs))
