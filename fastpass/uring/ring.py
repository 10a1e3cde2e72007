"""One io_uring per worker: set-up with the flags the kernel takes, a start-up probe, submission
and completion draining, on python-liburing (`liburing` on PyPI).

The facts that shape it, measured on this project's 2-core machine (Linux 6.18, Python 3.11):

- The binding's calls cost about as much as the syscalls they save.  A 4 KiB pread of a
  cached file is 0.96 us through `os.preadv`; on the ring it is 2.6 us submitted one at a
  time and 1.8 us in batches of 32 (get_sqe + prep + set_data 0.6 us, an `Iovec` 0.8 us,
  consuming a CQE 0.4 us).  So the ring pays where the backing call would block (a cold
  read, an fsync, a slow device) and several can wait at once, not for work the page cache
  answers in a microsecond: data ops go to the ring, metadata stays synchronous.
- The binding's `prep_read`/`prep_write` take only bytes/bytearray, but an `Iovec` takes
  memoryviews, so `readv`/`writev` work straight on the worker's mmap buffers without a
  copy.  An `Iovec` keeps its buffers alive; a caller keeps the `Iovec` until the CQE.
- A signal (the worker's once-a-second SIGALRM) ends a wait with InterruptedError, or, when
  the same call submitted SQEs, with their count; either way the handler has run when the
  call returns, and the caller waits again.  The binding keeps the GIL while it waits: a
  ring serves a single-threaded process (each worker is one).
- Registered buffers are not used: the binding's `prep_read_fixed`/`prep_write_fixed` take
  only a bytearray and use its start, which is neither page aligned (O_DIRECT needs it) nor
  inside the pool's mmap buffers; given a pool buffer's memoryview they refuse it (tried).
  Registered files save an fget/fput (tens of ns) per SQE for an extra binding call (about
  0.1 us): at Python's cost per SQE that does not pay either.
- READDIRPLUS opens its new entries (O_PATH) as one batch on the ring, the call that loads
  a cold inode; it does not statx them there.  Per entry of a 10,000-entry ext4 directory,
  resolved in batches of 25 (one reply's worth), cold / warm: statx batch on the ring then
  the identity step (open, fstat, handle) 14.6 / 8.6 us; openat batch on the ring then
  fstat and handle 12.9 / 6.4 us.  STATX always goes to an io-wq thread, OPENAT only when
  the dentry is not cached; and the binding's `Statx` gives times as float seconds (steps
  of 238 ns at today's dates), too coarse for the attributes a reply carries.  An entry
  the worker already holds is stat'ed synchronously: its inode is pinned in memory by the
  worker's fd, and a stat is 1.6 us there, 2.3 on the ring.  The binding takes paths only
  as str (UTF-8), so other names stay inline.
- OPEN and RELEASE stay synchronous.  An open reopens the inode's O_PATH fd through
  /proc/self/fd, a magic link the ring cannot resolve without an io-wq thread: 53.6 us
  against 1.5 us inline.  A close on the ring completes inline (+1.2 us), and the last
  close of a file (freeing an unlinked file's blocks) runs in the worker either way.
- Buffered data: see fastpass.fs.data (what the page cache holds is read inline; ext4 hands
  every buffered write on the ring to an io-wq thread, 49.7 us against 0.75 inline).
"""

from __future__ import annotations

import select

import liburing as L

# Preferred first: one submitter and completions run only when the worker asks for them
# (DEFER_TASKRUN, 6.1+), then cooperative task running (5.19+), then none.
SETUP_FLAGS = (
    L.IORING_SETUP_SINGLE_ISSUER | L.IORING_SETUP_DEFER_TASKRUN,
    L.IORING_SETUP_SINGLE_ISSUER | L.IORING_SETUP_COOP_TASKRUN,
    L.IORING_SETUP_COOP_TASKRUN,
    0,
)
# What the worker submits: a kernel without one of these serves on plain syscalls.
NEEDED_OPS = (
    "IORING_OP_READV", "IORING_OP_WRITEV", "IORING_OP_FSYNC", "IORING_OP_FALLOCATE", "IORING_OP_POLL_ADD",
    "IORING_OP_OPENAT",
)  # fmt: skip
_POLLIN = select.POLLIN
ENTRIES = 64  # the least SQ size a worker's ring gets (its CQ is twice that)
# A request that makes a batch of calls tags call i `tag + i * PART`: the bits below PART are
# the worker's (its slot and a flag), the ones above number the calls of the batch.
PART = 1 << 17


class Unavailable(Exception):
    """io_uring cannot serve here; the message says why, in one line."""


class Ring:
    """A ring and what it takes to use it from one thread: SQEs tagged with a u64, CQEs drained
    as (tag, result) pairs, results as negative errno ints (never raised)."""

    def __init__(self, entries: int):
        self._ring = L.Ring()
        self._cqe = L.Cqe()
        self.flags = -1
        error: OSError | None = None
        for flags in SETUP_FLAGS:
            try:
                L.io_uring_queue_init(entries, self._ring, flags)
            except OSError as e:
                error = e
                if e.errno in (1, 38):  # EPERM (io_uring_disabled, seccomp), ENOSYS: no flag helps
                    break
                continue
            self.flags = flags
            break
        if self.flags < 0:
            raise Unavailable(f"io_uring_setup failed: {error.strerror if error else 'unknown'}")
        try:
            probe = L.probe() or {}
        except OSError as e:
            self.close()
            raise Unavailable(f"io_uring probe failed: {e.strerror}") from None
        missing = [op for op in NEEDED_OPS if not probe.get(op)]
        if missing:
            self.close()
            raise Unavailable(f"kernel lacks {', '.join(missing)}")
        self._get = L.io_uring_get_sqe
        self._set = L.io_uring_sqe_set_data64
        self.pending = 0  # SQEs prepared since the last submit
        self.prepared = 0  # SQEs prepared in all: a caller tells how many calls it made
        # What each tag's SQE points to (an iovec, a path) and the binding does not keep alive
        # past the prep call: a tag has one SQE in flight at a time, so the next one
        # with that tag replaces it, and what is kept is bounded by the tags in use.
        self._held: dict[int, object] = {}

    def close(self) -> None:
        L.io_uring_queue_exit(self._ring)

    def _sqe(self) -> L.SQE:
        sqe = self._get(self._ring)
        if sqe is None:  # the SQ is full: hand what is there to the kernel and take a fresh one
            self.submit()
            sqe = self._get(self._ring)
        self.pending += 1
        self.prepared += 1
        return sqe

    # --- preparation: each takes the tag its CQE will carry ---------------------------------
    def readv(self, fd: int, view: memoryview, offset: int, tag: int) -> L.SQE:
        """Read into `view`, which the caller keeps until the CQE (its iovec is kept here)."""
        sqe = self._sqe()
        self._held[tag] = iov = L.Iovec([view])
        L.io_uring_prep_readv(sqe, fd, iov, offset)
        self._set(sqe, tag)
        return sqe

    def poll_in(self, fd: int, tag: int) -> None:
        """Complete once `fd` has something to read (a one-shot POLL_ADD for POLLIN)."""
        sqe = self._sqe()
        L.io_uring_prep_poll_add(sqe, fd, _POLLIN)
        self._set(sqe, tag)

    def writev(self, fd: int, view: memoryview, offset: int, tag: int) -> None:
        sqe = self._sqe()
        self._held[tag] = iov = L.Iovec([view])
        L.io_uring_prep_writev(sqe, fd, iov, offset)
        self._set(sqe, tag)

    def fsync(self, fd: int, datasync: bool, tag: int) -> None:
        sqe = self._sqe()
        L.io_uring_prep_fsync(sqe, fd, L.IORING_FSYNC_DATASYNC if datasync else 0)
        self._set(sqe, tag)

    def open_path(self, dirfd: int, name: str, flags: int, tag: int) -> None:
        """openat(dirfd, name, flags): the CQE's result is the new fd.

        The binding takes the name as str and passes it on UTF-8 encoded (it refuses bytes
        and surrogate escapes).  The kernel completes the open inline when the name's dentry
        is cached, and in an io-wq thread when it must read the disk.
        """
        sqe = self._sqe()
        self._held[tag] = name
        L.io_uring_prep_open(sqe, name, flags, 0, dirfd)
        self._set(sqe, tag)

    def fallocate(self, fd: int, mode: int, offset: int, length: int, tag: int) -> None:
        sqe = self._sqe()
        L.io_uring_prep_fallocate(sqe, fd, mode, offset, length)
        self._set(sqe, tag)

    # --- submission and completion ---------------------------------------------------------
    def submit(self) -> None:
        """Hand what is prepared to the kernel now (it is otherwise submitted by `wait`)."""
        if self.pending:
            self.pending = 0
            L.io_uring_submit(self._ring)

    def wait(self) -> list[tuple[int, int]]:
        """Submit what is prepared, block until at least one completion, and drain them all
        as (tag, result) pairs.

        A signal may end the wait early: its handler has run by the time this returns, and
        the caller gets what completed meanwhile (possibly nothing) and calls again.
        """
        ring = self._ring
        cqe = self._cqe
        self.pending = 0
        try:
            L.io_uring_submit_and_wait(ring, 1)
        except InterruptedError:
            pass  # a signal (the worker's SIGALRM): its handler has run; take what is there
        done = []
        ready = L.io_uring_cq_ready
        peek = L.io_uring_peek_cqe
        seen = L.io_uring_cqe_seen
        while ready(ring):
            peek(ring, cqe)
            c = cqe[0]
            try:
                res = c.res
            except OSError as e:  # the binding raises a negative result; it goes on as -errno
                res = -(e.errno or 5)
            done.append((c.user_data, res))
            seen(ring, c)
        return done

def why_unavailable() -> str | None:
    """None where a ring can be set up with what the worker needs, else why not."""
    try:
        Ring(8).close()
    except Unavailable as e:
        return str(e)
    return None
