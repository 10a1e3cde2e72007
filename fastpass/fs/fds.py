"""A worker's file descriptors: how many it may hold, and which it gives back first.

Facts that shape it:

* RLIMIT_NOFILE counts fd numbers per process.  The supervisor raises it once, as far as
  the process may (`raise_limit`): to fs.nr_open with CAP_SYS_RESOURCE, else to the hard
  limit it inherited; every worker inherits the result.  In containers root often lacks
  that capability (this project's test machines: a hard limit of 20,000, fixed).
* A worker holds four kinds of fds:
  fixed: its device fd, io_uring, shared memory, log and the like, counted once when it
  starts serving (`settle`);
  own: the backing fd of each file it opened for a caller, until RELEASE;
  copies: its reopen of an fh it did not open (another worker's, or one opened without an
  fd), kept for the next request on that fh, and its open directories (a listing goes on
  at its offset in a new open);
  paths: an O_PATH fd per inode, reopened from the inode's file handle when needed.
  Copies and paths are caches, reopened on demand, so they give way to own fds.
* Between requests, fixed + own + copies + paths stays within the limit less a reserve
  (`trim`, after each fd a table keeps).  Past it paths go first (the least recently used;
  FLOOR of them stay, as the request being served uses the newest), then copies (the
  oldest).  The reserve covers what one request opens and closes again (a FLUSH's dup, the
  O_PATH fd a copy is reopened from), what requests in flight on the ring hold (a
  READDIRPLUS batch of opens, capped at BATCH while fds are short; copies waiting to close),
  and a few SPARES.
* A copy may be in use by a request in flight on the ring (its number in an SQE not yet
  submitted, or in the state its reply needs) or by the request being served (a
  copy_file_range holds two).  Closing it then would let the next open take its number,
  and that call would act on another file.  So an evicted copy is closed only once every
  request that was being served or in flight when it was evicted has finished (`reap`, at
  the top of each request).  Paths are closed at once: no ring call keeps one (a READDIRPLUS
  batch opens relative to its own dup of the directory's fd).
* OPEN, CREATE and TMPFILE keep an own fd, and are refused with EMFILE once own
  fds would leave less than 2 * FLOOR for the caches (`admit`): the opener alone sees it.
  FLUSH uses the fd the worker holds and RELEASE closes one; READ, WRITE (the writeback
  cache's too), FSYNC and the like need at most a copy, for which the caches always make
  room.  Should an open for them fail all the same (EMFILE past a miscount, ENFILE: the
  system's table), a spare fd is closed and the open tried again (`opening`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import time
from collections import deque
from collections.abc import Callable, Sized
from typing import TypeVar

FLOOR = 32  # O_PATH fds kept whatever the pressure; as many are left for copies
BATCH = 16  # opens of one READDIRPLUS on the ring while fds are short
SPARES = 4  # fds kept open on /dev/null, closed to make room where an open must not fail
RESERVE = 64  # fds a request may open and close again, beyond those in flight
_NR_OPEN = "/proc/sys/fs/nr_open"
_SHORT = (errno.EMFILE, errno.ENFILE)
_clock = time.perf_counter_ns  # the clock of the worker's dispatch times (`busy_since`)
T = TypeVar("T")


def raise_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE as far as this process may; (the limit now, fs.nr_open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open(_NR_OPEN, "rb") as f:
            nr_open = int(f.read())
    except (OSError, ValueError):
        nr_open = hard
    for target in (nr_open, hard):
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target, nr_open
        except (ValueError, OSError):  # EPERM (Python says ValueError): no CAP_SYS_RESOURCE
            continue
    return soft, nr_open


def _too_many() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class FdBudget:
    """One worker's fds, as its inode and handle tables keep them (each registers itself)."""

    def __init__(self, limit: int | None = None, io_depth: int = 1):
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if limit is None else limit
        reserve = min(self.limit // 4, RESERVE + SPARES + io_depth * (BATCH + 2))
        self.room = self.limit - reserve  # fds held between requests, the fixed ones included
        self.fixed = 0
        # Set by the tables: their fds (as live views), how to give some back, and whether
        # paths can be given back at all (not without file handles to reopen them from).
        self.paths: Sized = ()
        self.files: Sized = ()  # own and copies
        self.copies: Sized = ()  # open directories included
        self.shed_paths: Callable[[int], int] = lambda n: 0
        self.shed_copies: Callable[[int], int] = lambda n: 0
        self.paths_pinned = False
        # Set by the worker: the dispatch time (`_clock`) of its oldest request in flight, or None.
        self.busy_since: Callable[[], int | None] = lambda: None
        self._doomed: deque[tuple[int, int]] = deque()  # (evicted at, fd): copies to close
        self._spares: list[int] = []
        self._refill()

    def settle(self) -> None:
        """Count the fds this process holds besides the tables' (once set up to serve)."""
        self.fixed = len(os.listdir("/proc/self/fd")) - 1 - len(self.paths) - len(self.files) - len(self._doomed)

    def trim(self) -> None:
        """Give back cached fds past the budget: paths, then copies.  Copies already
        given back but not closed yet do not count, or every fd kept while they wait would
        give back one more."""
        excess = self.fixed + len(self.paths) + len(self.files) - self.room
        if excess > 0:
            excess -= self.shed_paths(excess)
            if excess > 0:
                self.shed_copies(excess)

    def free(self) -> int:
        """Fds that fit in the budget now."""
        return self.room - self.fixed - len(self.paths) - len(self.files) - len(self._doomed)

    def admit(self) -> None:
        """Before a caller's open keeps an own fd: EMFILE where the caches would be left less
        than their floors (pinned paths, where they cannot be reopened, count in full)."""
        own = len(self.files) - len(self.copies)
        pinned = len(self.paths) if self.paths_pinned else 0
        if self.fixed + own + pinned + 2 * FLOOR >= self.room:
            raise _too_many()

    def doom(self, fd: int) -> None:
        """Close a copy once the requests that may use it are done (`reap`)."""
        self._doomed.append((_clock(), fd))

    def reap(self) -> None:
        """Close the copies no request in flight may still use; take back spares used."""
        doomed = self._doomed
        if doomed:
            oldest = self.busy_since()
            while doomed and (oldest is None or doomed[0][0] < oldest):
                with contextlib.suppress(OSError):  # a deferred write error: no caller is left to tell
                    os.close(doomed.popleft()[1])
        if len(self._spares) < SPARES:
            self._refill()

    def _refill(self) -> None:
        try:
            while len(self._spares) < SPARES:
                self._spares.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            pass  # short of fds: the next `reap` tries again

    def opening(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args), an open that serving an open file or a listing needs (FLUSH, READ, WRITE,
        FSYNC, READDIR): where it fails for want of an fd, a spare is closed and it is tried again."""
        while True:
            try:
                return fn(*args)
            except OSError as e:
                if e.errno not in _SHORT or not self._spares:
                    raise
            os.close(self._spares.pop())
