"""What a worker has read and not yet answered, kept where its replacement finds it.

Why: a worker killed at any instant must cost its callers nothing.  The kernel keeps
every request a worker had read from its device clone, in that clone's processing
list, for as long as some process holds the clone (the supervisor does); on
FUSE-over-io_uring it keeps them in the entries, found again by a commit with their
`unique`.  What the kernel does not keep is what the worker had done with them.  So
each worker slot (a request buffer, or an entry) has a record in one shared mapping
the supervisor makes before the fork, and the replacement, which inherits the
buffers, the entries and this journal, answers each request the dead one left:

- `answered`: the unique of the last request answered from the slot.  A slot whose
  buffer names another unique holds a request the kernel still waits for.
- A request with an effect (`fastpass.fs.table.EFFECTS`: it creates, removes, renames,
  writes, takes or gives back a handle) is marked STARTED before its handler runs and
  DONE, with its reply, before the reply is written.  DONE: the replacement sends the
  recorded reply again.  STARTED: the effect may have happened, so it runs the request
  again in redo mode (`fastpass.fs.redo`), where "already done" counts as success.
  Neither: it runs the request as new.
- A request whose replay killed the worker again, twice, is answered EIO: whatever in it
  kills a worker must not end the mount (`tries`).
- An entry's request is staged (its in-header and first argument copied before the
  payload) when dispatched; the reply then overwrites the header the kernel wrote, so the
  record keeps where the staged copy lies and how long it is.

- A record names its request (`unique`) last: its other fields are written first, then the
  unique.  A worker killed between two fields of a pack_into (which writes field by field)
  then leaves the record of the request before, which names another unique and so says
  nothing of this one ("new": run as new, and nothing of it had run).  Written unique
  first, a cut record named the new request with the old one's state: a replay answered it
  with the old request's reply, or (a slot never used before) with no staged copy to run.

Cost: two u64 stores for every request, and for a request with an effect two pack_intos
and a copy of its reply (at most BODY bytes: entry_out + open_out is 144).
"""

from __future__ import annotations

import mmap
import os
import struct

BODY = 256  # the largest reply recorded; a larger one leaves the record STARTED (run again)
_HEAD = struct.Struct("<QiIII")  # unique, error, state or body length, stage start, stage length
_TAIL = struct.Struct("<iIII")  # the head after its unique, at 8
_STATE = struct.Struct("<iI")  # error and state, at 8: the stage stays as staging wrote it for the same unique
_SIZE = 32 + BODY
STARTED = 0xFFFFFFFF  # the state field: the handler may have run, no reply recorded
_STAGED = 0xFFFFFFFE  # dispatched (an entry's request), no effect recorded
_u64 = struct.Struct("<Q")


class Journal:
    """`slots` records in a shared anonymous mapping: made before the fork, kept by the
    supervisor, inherited by each worker that sits at the same index."""

    def __init__(self, slots: int, attach: int | None = None):
        """`attach`: the memfd of a journal handed over (`fastpass.restart`)."""
        self.slots = slots
        self.fd = os.memfd_create("fastpass-journal", os.MFD_CLOEXEC) if attach is None else attach
        if attach is None:
            os.ftruncate(self.fd, slots * 24 + slots * _SIZE)
        self.map = mmap.mmap(self.fd, slots * 24 + slots * _SIZE)  # MAP_SHARED
        view = memoryview(self.map)
        self.answered = view[: slots * 8].cast("Q")  # per slot: the unique last answered
        self._tries = view[slots * 8 : slots * 24].cast("Q")  # per slot: a unique replayed, and how often
        self.records = view[slots * 24 :]
        self._tail = _TAIL.pack_into
        self._state = _STATE.pack_into
        self._name = _u64.pack_into
        self._unpack = _HEAD.unpack_from

    def started(self, slot: int, unique: int) -> None:
        off = slot * _SIZE
        self._state(self.records, off + 8, 0, STARTED)
        self._name(self.records, off, unique)

    def staged(self, slot: int, unique: int, start: int, length: int) -> None:
        off = slot * _SIZE
        self._tail(self.records, off + 8, 0, _STAGED, start, length)
        self._name(self.records, off, unique)

    def done(self, slot: int, unique: int, error: int, body: object) -> None:
        """The reply as it will be sent; one too large to keep leaves the request STARTED."""
        off = slot * _SIZE
        if body is None:
            self._state(self.records, off + 8, error, 0)
            self._name(self.records, off, unique)
            return
        n = len(body)  # type: ignore[arg-type]
        if n <= BODY:
            self.records[off + 32 : off + 32 + n] = body  # type: ignore[index]
            self._state(self.records, off + 8, error, n)
            self._name(self.records, off, unique)

    def tries(self, slot: int, unique: int) -> int:
        """How many workers have replayed request `unique` before this one (which counts itself)."""
        tries = self._tries
        before = tries[2 * slot + 1] if tries[2 * slot] == unique else 0
        tries[2 * slot], tries[2 * slot + 1] = unique, before + 1
        return before

    def pending(self, slot: int, unique: int) -> bool:
        """Whether the request `unique` found in the slot's buffer still waits for an answer."""
        return unique != 0 and unique != self.answered[slot]

    def record(self, slot: int, unique: int) -> tuple[str, int, bytes | None, int, int]:
        """What is known of request `unique` in `slot`: (state, error, body, stage start, stage
        length), state one of "new" (nothing), "staged", "started", "done"."""
        off = slot * _SIZE
        recorded, error, state, start, length = self._unpack(self.records, off)
        if recorded != unique:
            return "new", 0, None, 0, 0
        if state == STARTED:
            return "started", 0, None, start, length
        if state == _STAGED:
            return "staged", 0, None, start, length
        body = bytes(self.records[off + 32 : off + 32 + state]) if state else None
        return "done", error, body, start, length


def unique_at(buf: memoryview, offset: int = 0) -> int:
    """fuse_in_header.unique (the out-header's too) of the header at `offset`."""
    return _u64.unpack_from(buf, offset + 8)[0]
