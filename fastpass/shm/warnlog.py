"""The last warnings each process of a mount logged, kept in the shared region for `fastpass stats`.

Why: a server in the background logs to syslog or a file that the person asking what is wrong
may not think to read (or, as another user, cannot).  Each process (a worker, the watcher, the
supervisor) writes its warnings and errors into a block of its own, KEPT entries round, so no
lock is taken and a logging call costs one struct pack.  An entry is invalidated first and its
sequence number written last, so a reader never takes a half-written text for a whole one.
"""

from __future__ import annotations

import logging
import struct

from fastpass.shm.counters import MAX_WORKERS
from fastpass.shm.region import Layout, Region

KEPT = 4  # entries per process
SUPERVISOR = MAX_WORKERS  # the supervisor's block, after the workers' and the watcher's
_ENTRY = struct.Struct("<Qd236s")  # sequence number (0: being written), time.time(), text (UTF-8, NUL-padded)
_SEQ = struct.Struct("<Q")
TEXT = _ENTRY.size - 16
_BLOCK = KEPT * _ENTRY.size


class WarningSpace:
    def __init__(self, layout: Layout):
        self.offset = layout.take(_BLOCK * (SUPERVISOR + 1))


class SharedWarnings(logging.Handler):
    """A logging handler for WARNING and above that keeps the process's last KEPT messages in its block."""

    def __init__(self, space: WarningSpace, region: Region, index: int):
        super().__init__(logging.WARNING)
        self._map = region.map
        self._block = space.offset + index * _BLOCK
        self._count = max((_SEQ.unpack_from(self._map, self._block + i * _ENTRY.size)[0] for i in range(KEPT)),
                          default=0)  # a replacement goes on where its predecessor stopped  # fmt: skip

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.levelname.lower()}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        except Exception:  # noqa: BLE001 - a message that cannot be formatted is logged elsewhere as such
            return
        self._count += 1
        at = self._block + self._count % KEPT * _ENTRY.size
        _SEQ.pack_into(self._map, at, 0)
        _ENTRY.pack_into(self._map, at, 0, record.created, text.encode(errors="replace")[:TEXT])
        _SEQ.pack_into(self._map, at, self._count)


def attach(space: WarningSpace, region: Region, index: int) -> None:
    """Keep this process's warnings in block `index`, instead of any block a parent kept them in."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, SharedWarnings)]:
        root.removeHandler(handler)
    root.addHandler(SharedWarnings(space, region, index))


def recent(space: WarningSpace, region: Region, blocks: dict[int, str], last: int) -> list[tuple[float, str, str]]:
    """The `last` newest (time, process name, text) of the blocks named in `blocks` (index -> name)."""
    found = []
    m = region.map
    for index, name in blocks.items():
        for i in range(KEPT):
            at = space.offset + index * _BLOCK + i * _ENTRY.size
            seq, when, text = _ENTRY.unpack_from(m, at)
            if seq and _SEQ.unpack_from(m, at)[0] == seq:  # not rewritten while it was read
                found.append((when, name, text.rstrip(b"\0").decode(errors="replace")))
    return sorted(found)[-last:]
