"""Who supervises the mount now, in the shared region: the supervisor's pid and start time.

Why: the supervisor may die (kill -9, the OOM killer) while its workers serve on.  Each
worker then finds out (PR_SET_PDEATHSIG where the dead one was its parent, and a look
every second, since a worker adopted by a successor has no live parent to signal it),
and under one lock the first to look forks a successor and records it here; the others
see a live supervisor and go on.  The start time, with the pid, tells a live supervisor
from a process that got its pid later.  `serving` is set once the start has been
answered: a supervisor that dies before that leaves the mount to `fastpass mount`,
which detaches it (`fastpass.startup`).
"""

from __future__ import annotations

import struct

from fastpass.shm.region import Layout, Region

_FIELDS = struct.Struct("<QQQ")  # pid, start time (clock ticks after boot), serving


class ControlSpace:
    def __init__(self, layout: Layout):
        self.offset = layout.take(_FIELDS.size)


def start_time(pid: int) -> int | None:
    """The process's start time from /proc/PID/stat, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])  # state, ..., starttime (field 22)


class Control:
    def __init__(self, space: ControlSpace, region: Region):
        self.offset = space.offset
        self.map = region.map

    def record(self, pid: int) -> None:
        """`pid` supervises from now on."""
        _FIELDS.pack_into(self.map, self.offset, pid, start_time(pid) or 0, self.serving())

    def serve(self) -> None:
        """The start was answered: from now on a dead supervisor gets a successor."""
        pid, started, _ = _FIELDS.unpack_from(self.map, self.offset)
        _FIELDS.pack_into(self.map, self.offset, pid, started, 1)

    def serving(self) -> int:
        return _FIELDS.unpack_from(self.map, self.offset)[2]

    def recorded(self) -> int:
        """The pid recorded last, alive or not."""
        return _FIELDS.unpack_from(self.map, self.offset)[0]

    def supervisor(self) -> int | None:
        """The recorded supervisor's pid while it lives, else None."""
        pid, started, _ = _FIELDS.unpack_from(self.map, self.offset)
        return pid if pid and start_time(pid) == started else None
