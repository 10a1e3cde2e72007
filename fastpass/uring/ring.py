"""One io_uring per worker, spoken directly: io_uring_setup, io_uring_enter and
io_uring_register through ctypes, the SQ and CQ rings and the SQE array mapped with mmap,
SQEs written in place with struct.pack_into and CQEs read in place.

Size: over 500 lines, as the whole io_uring binding (set-up, probe, every opcode's SQE,
submission and completion) stays in the one module that knows its memory layout.

MEASUREMENTS

What goes on the ring, measured on this project's 2-core machine (Linux 6.18, Python 3.11):

- A 4 KiB pread of a cached file is 0.96 us through `os.preadv`; the ring pays where the
  backing call would block (a cold read, an fsync, a slow device) and several can wait at
  once, not for work the page cache answers in a microsecond: data ops go to the ring,
  metadata stays synchronous.
- READDIRPLUS opens its new entries (O_PATH) as one batch on the ring, the call that loads
  a cold inode; it does not statx them there.  Per entry of a 10,000-entry ext4 directory,
  resolved in batches of 25 (one reply's worth), cold / warm: statx batch on the ring then
  the identity step (open, fstat, handle) 14.6 / 8.6 us; openat batch on the ring then
  fstat and handle 12.9 / 6.4 us.  STATX always goes to an io-wq thread, OPENAT only when
  the dentry is not cached.  An entry the worker already holds is stat'ed synchronously:
  its inode is pinned in memory by the worker's fd, and a stat is 1.6 us there, 2.3 on the
  ring.
- OPEN and RELEASE stay synchronous.  An open reopens the inode's O_PATH fd through
  /proc/self/fd, a magic link the ring cannot resolve without an io-wq thread: 53.6 us
  against 1.5 us inline.  A close on the ring completes inline (+1.2 us), and the last
  close of a file (freeing an unlinked file's blocks) runs in the worker either way.
- Buffered data: see fastpass.fs.data (what the page cache holds is read inline; ext4 hands
  every buffered write on the ring to an io-wq thread, 49.7 us against 0.75 inline).
- What an operation costs from Python (bench/micro/test_ring.py, pytest-benchmark minimum,
  with other test runs keeping both cores busy): a NOP 2.09 us one at a time (prepare,
  io_uring_enter, reap) and 0.41 us per op in batches of 32; a 4 KiB readv of a cached file
  3.45 us one at a time and 1.49 us per op in batches of 32, against 0.93 us for os.preadv.
  The parts (CPU time): writing a 64-byte SQE in place with pack_into 0.10 us and taking its
  slot 0.10; a readv's buffer address through ctypes (from_buffer, addressof) 0.15 and its
  iovec 0.05, so preparing a readv 0.8-0.96 us all told; a CQE 0.06 us reaped in a batch
  (iter_unpack over the CQ); and io_uring_enter through ctypes about 0.45 us more than the
  syscall itself.  The binding used before (python-liburing) was measured here at 0.6 us for
  get_sqe + prep + set_data, 0.8 for an Iovec and 0.4 for a CQE; measured side by side on
  one machine whose CPU its wheel could run on, its whole readv preparation was 0.64 us, a
  readv one at a time 2.41 and 1.27 per op in batches of 32: a ctypes call costs more than a
  C extension's, and it is the syscall of a batch, not each SQE, that Python pays for.
- Registered files (IORING_REGISTER_FILES, IOSQE_FIXED_FILE) do not pay: a cached 4 KiB
  readv took 4.35 us one at a time with a registered file against 4.39 with its fd, and 1.44
  against 1.47 us per op in batches of 32 (minimums of 10 interleaved runs, CPU time): the
  kernel saves an fdget, which a single-threaded worker takes without an atomic anyway, and
  each file would cost a register call on open and one on release.

SHARED MEMORY AND ITS ORDERING

The kernel and this process share three mappings: the SQ ring (head, tail, flags, and an
index array set once to the identity, so SQE i is slot i), the SQE array, and the CQ ring
(head, tail, the CQEs), one mapping with the SQ ring (IORING_FEAT_SINGLE_MMAP).  The ABI
asks for a release store of the SQ tail after the SQEs are written, an acquire load of the
CQ tail before the CQEs are read, and a release store of the CQ head after they are read.
In CPython each of these is a plain store or load: an SQE is written by one C call
(struct.pack_into) and each ring index by another (a memoryview item store), opaque calls
the C compiler cannot move another memory access across, and a 4-byte aligned item store is
one instruction, never torn.  That is enough here because:

- No SQPOLL: the kernel reads the SQ tail and the SQEs only inside our own io_uring_enter,
  on this thread, after the syscall boundary; program order is all it takes, on any CPU.
- The CQ is written by other CPUs where completions are posted outside our task (flags 0 or
  COOP_TASKRUN: io-wq threads, interrupts).  x86-64 is TSO: loads are not reordered with
  other loads (tail, then the CQEs it covers: an acquire) and stores are not reordered with
  earlier loads (the CQEs read, then the head: a release).  With DEFER_TASKRUN, our first
  choice, every CQE is posted inside our own io_uring_enter and this holds on any CPU.
  A weakly ordered CPU (arm64) without DEFER_TASKRUN would need real barriers there.
- IORING_SETUP_SQPOLL, which we do not use, would need more: its kernel thread reads the tail
  concurrently (a release store, free on TSO), but after publishing the tail the submitter
  must read IORING_SQ_NEED_WAKEUP, and TSO lets that load pass the earlier tail store: a full
  barrier (mfence or a locked instruction) is needed between them, which Python cannot issue.

What an SQE points to outside the ring (the data buffer, the iovec, the path) stays alive
until its CQE: it is kept under the SQE's tag until the next SQE with that tag, which a caller
prepares only after the completion (a tag has one SQE in flight at a time).
"""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import mmap
import os
import select
import signal
import struct
from collections.abc import Callable

from fastpass.uring import abi
from fastpass.uring.abi import (
    OP_CLOSE,
    OP_FALLOCATE,
    OP_FSYNC,
    OP_NOP,
    OP_OPENAT,
    OP_POLL_ADD,
    OP_READ_FIXED,
    OP_READV,
    OP_STATX,
    OP_URING_CMD,
    OP_WRITE_FIXED,
    OP_WRITEV,
)

# Preferred first: one submitter and completions run only when the worker asks for them
# (DEFER_TASKRUN, 6.1+), then cooperative task running (5.19+), then none.
SETUP_FLAGS = (
    abi.SETUP_SINGLE_ISSUER | abi.SETUP_DEFER_TASKRUN,
    abi.SETUP_SINGLE_ISSUER | abi.SETUP_COOP_TASKRUN,
    abi.SETUP_COOP_TASKRUN,
    0,
)
# What the worker submits: a kernel without one of these serves on plain syscalls.
NEEDED_OPS = (OP_READV, OP_WRITEV, OP_FSYNC, OP_FALLOCATE, OP_POLL_ADD, OP_OPENAT)
_FEATURES = abi.FEAT_SINGLE_MMAP | abi.FEAT_NODROP  # both 5.5, before any of NEEDED_OPS
ENTRIES = 64  # the least SQ size a worker's ring gets (its CQ is twice that)
# A request that makes a batch of calls tags call i `tag + i * PART`: the bits below PART are
# the worker's (its slot and a flag), the ones above number the calls of the batch.
PART = 1 << 17

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall  # releases the GIL while it waits (no argtypes: ctypes is fastest without)
_get_errno = ctypes.get_errno
_from_buffer = (ctypes.c_char * 0).from_buffer  # a view's memory, held in place, as a ctypes object
_addressof = ctypes.addressof
_pack_sqe = abi.SQE.pack_into
_pack_iovec = abi.IOVEC.pack
# CPython keeps a bytes object's data, NUL-terminated, this far into the object (id is its address).
_BYTES_DATA = bytes.__basicsize__ - 1
_U32 = 0xFFFFFFFF
_RETRY_LATER = (errno.EINTR, errno.EAGAIN, errno.EBUSY)  # enter took nothing now; the next one will


class Unavailable(Exception):
    """io_uring cannot serve here; the message says why, in one line."""


def _register(fd: int, opcode: int, arg: ctypes.Array, nr: int) -> None:
    if _syscall(abi.SYS_REGISTER, fd, opcode, arg, nr) < 0:
        err = _get_errno()
        raise OSError(err, os.strerror(err))


def _carray(data: bytes | int) -> ctypes.Array:
    """A C array holding `data` (or that many zero bytes), to pass by address."""
    if isinstance(data, int):
        return (ctypes.c_char * data)()
    return (ctypes.c_char * len(data)).from_buffer_copy(data)


class Ring:
    """A ring and what it takes to use it from one thread: SQEs tagged with a u64, CQEs drained
    as (tag, result) pairs, results as negative errno ints (never raised).

    `sqe128` gives 128-byte SQEs (an 80-byte URING_CMD command area), `cqe32` 32-byte CQEs.
    """

    def __init__(self, entries: int, sqe128: bool = False, cqe32: bool = False):
        extra = (abi.SETUP_SQE128 if sqe128 else 0) | (abi.SETUP_CQE32 if cqe32 else 0)
        err = 0
        fd = -1
        for flags in SETUP_FLAGS:
            params = _carray(abi.PARAMS.size)
            params[abi.PARAMS_FLAGS : abi.PARAMS_FLAGS + 4] = (flags | extra).to_bytes(4, "little")
            fd = _syscall(abi.SYS_SETUP, entries, params)
            if fd >= 0:
                break
            err = _get_errno()
            if err in (errno.EPERM, errno.ENOSYS):  # io_uring_disabled, seccomp, no io_uring: no flag helps
                break
        if fd < 0:
            raise Unavailable(f"io_uring_setup failed: {os.strerror(err)}")
        self._fd = fd
        self.flags = flags
        (sq_n, cq_n, _, _, _, self.features, _, sq_head, sq_tail, sq_mask, _, sq_flags, _, sq_array, _,
         cq_head, cq_tail, cq_mask, _, _, cqes, _, _) = abi.PARAMS.unpack_from(params)  # fmt: skip
        if self.features & _FEATURES != _FEATURES:
            os.close(fd)
            raise Unavailable("kernel older than 5.5 (no single mmap or no CQ overflow list)")
        self._sqe_shift = 7 if sqe128 else 6
        self._cmd_size = (128 if sqe128 else 64) - abi.SQE_CMD_AT
        cqe = abi.CQE32 if cqe32 else abi.CQE
        self._cqe_size = cqe.size
        self._unpack_cqe = cqe.unpack_from
        self._unpack_cqes = cqe.iter_unpack
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        share = mmap.MAP_SHARED | mmap.MAP_POPULATE
        size = max(sq_array + 4 * sq_n, cqes + cq_n * cqe.size)
        try:
            self._rings = mmap.mmap(fd, size, share, prot, offset=abi.OFF_SQ_RING)
            self._sqes = mmap.mmap(fd, sq_n << self._sqe_shift, share, prot, offset=abi.OFF_SQES)
        except OSError as e:
            os.close(fd)
            raise Unavailable(f"io_uring rings could not be mapped: {e.strerror}") from None
        self._u32 = u32 = memoryview(self._rings).cast("I")
        self._cqes = memoryview(self._rings)[cqes : cqes + cq_n * cqe.size]
        for i in range(sq_n):
            u32[sq_array // 4 + i] = i  # SQE i is always slot i: the array is never written again
        self._sq_n, self._sq_mask, self._cq_mask = sq_n, u32[sq_mask // 4], u32[cq_mask // 4]
        self._sq_head, self._sq_tail, self._sq_flags = sq_head // 4, sq_tail // 4, sq_flags // 4
        self._cq_head, self._cq_tail = cq_head // 4, cq_tail // 4
        # SQEs prepared in all, and taken by the kernel as of our last enter (its SQ head): ours
        # to count as Python ints, published (the tail, 32 bits) when we enter.
        self._tail = self._head = 0
        # What the SQE under each tag points to (see the module's docstring): a tag has one SQE
        # in flight at a time, so the next one with that tag replaces it, and what is kept is
        # bounded by the tags in use.
        self._held: dict[int, object] = {}
        self._fixed: object = None  # the pin of registered memory, from _fixed_lo to _fixed_hi
        self._fixed_lo = self._fixed_hi = 0
        try:
            self.ops = self.probe()
        except OSError as e:
            self.close()
            raise Unavailable(f"io_uring probe failed: {e.strerror}") from None
        needed = (*NEEDED_OPS, OP_URING_CMD) if sqe128 else NEEDED_OPS  # SQE128 is for commands
        missing = [abi.OP_NAMES[op] for op in needed if op not in self.ops]
        if missing:
            self.close()
            raise Unavailable(f"kernel lacks IORING_OP_{', IORING_OP_'.join(missing)}")

    def close(self) -> None:
        """Unmap and close (the kernel cancels what is still in flight)."""
        if self._fd < 0:
            return
        self._u32.release()
        self._cqes.release()
        self._rings.close()
        self._sqes.close()
        os.close(self._fd)
        self._fd = -1
        self._fixed = None
        self._fixed_lo = self._fixed_hi = 0
        self._held.clear()

    def probe(self) -> frozenset[int]:
        """The opcodes this kernel supports (IORING_REGISTER_PROBE, 5.6)."""
        buf = _carray(abi.PROBE_HEAD + abi.PROBE_OPS * abi.PROBE_OP.size)
        _register(self._fd, abi.REGISTER_PROBE, buf, abi.PROBE_OPS)
        raw = bytes(buf)
        ops = abi.PROBE_OP.iter_unpack(raw[abi.PROBE_HEAD : abi.PROBE_HEAD + raw[1] * abi.PROBE_OP.size])
        return frozenset(op for op, flags in ops if flags & abi.OP_SUPPORTED)

    def register_buffers(self, memory: mmap.mmap | memoryview) -> None:
        """Register `memory` (IORING_REGISTER_BUFFERS, one buffer, at most 1 GiB): from now on
        readv/writev into it are READ_FIXED/WRITE_FIXED, whose pages the kernel pinned once here
        instead of on every call (what O_DIRECT I/O would do).  The pages become resident, and
        `memory` cannot be closed while the ring lives."""
        pin = _from_buffer(memory)
        base = _addressof(pin)
        size = memory.nbytes if isinstance(memory, memoryview) else len(memory)
        _register(self._fd, abi.REGISTER_BUFFERS, _carray(abi.IOVEC.pack(base, size)), 1)
        self._fixed, self._fixed_lo, self._fixed_hi = pin, base, base + size

    @property
    def prepared(self) -> int:
        """SQEs prepared in all: a caller tells how many calls it made."""
        return self._tail

    @property
    def pending(self) -> int:
        """SQEs prepared and not yet taken by the kernel."""
        return self._tail - self._head

    def _next(self) -> int:
        """Take the next SQE: its byte offset in the SQE array, where the caller writes it whole."""
        tail = self._tail
        if tail - self._head == self._sq_n:  # the SQ is full: hand what is there to the kernel
            self.submit()
            if tail - self._head == self._sq_n:
                raise OSError(errno.EBUSY, "io_uring submission queue full")
        self._tail = tail + 1
        return (tail & self._sq_mask) << self._sqe_shift

    # --- preparation: each takes the tag its CQE will carry ---------------------------------
    def nop(self, tag: int) -> None:
        _pack_sqe(self._sqes, self._next(), OP_NOP, 0, 0, 0, 0, 0, 0, tag)

    def readv(self, fd: int, view: memoryview, offset: int, tag: int) -> None:
        """Read into `view`, which must stay alive until the CQE (a reference is kept here).
        Inside registered memory it is a READ_FIXED."""
        self._rw(OP_READV, OP_READ_FIXED, fd, _from_buffer(view), view.nbytes, offset, tag)

    def writev(self, fd: int, view: memoryview | bytes, offset: int, tag: int) -> None:
        """Write `view` (kept alive here until the CQE); inside registered memory a WRITE_FIXED."""
        try:
            pin = _from_buffer(view)
        except TypeError:  # read-only: the kernel writes a copy
            pin = _carray(bytes(view))
        self._rw(OP_WRITEV, OP_WRITE_FIXED, fd, pin, len(view), offset, tag)

    def _rw(self, op: int, fixed_op: int, fd: int, pin: ctypes.Array, size: int, offset: int, tag: int) -> None:
        addr = _addressof(pin)
        if self._fixed_lo <= addr < self._fixed_hi:  # registered memory: buf_index 0 (in the zeroed tail)
            _pack_sqe(self._sqes, self._next(), fixed_op, 0, fd, offset, addr, size, 0, tag)
        else:
            iov = _pack_iovec(addr, size)
            self._held[tag] = (pin, iov)
            _pack_sqe(self._sqes, self._next(), op, 0, fd, offset, id(iov) + _BYTES_DATA, 1, 0, tag)

    def poll_in(self, fd: int, tag: int) -> None:
        """Complete once `fd` has something to read (a one-shot POLL_ADD for POLLIN)."""
        _pack_sqe(self._sqes, self._next(), OP_POLL_ADD, 0, fd, 0, 0, 0, select.POLLIN, tag)

    def fsync(self, fd: int, datasync: bool, tag: int) -> None:
        _pack_sqe(self._sqes, self._next(), OP_FSYNC, 0, fd, 0, 0, 0, abi.FSYNC_DATASYNC if datasync else 0, tag)

    def fallocate(self, fd: int, mode: int, offset: int, length: int, tag: int) -> None:
        _pack_sqe(self._sqes, self._next(), OP_FALLOCATE, 0, fd, offset, length, mode, 0, tag)

    def open_path(self, dirfd: int, name: str | bytes, flags: int, tag: int, mode: int = 0) -> None:
        """openat(dirfd, name, flags, mode): the CQE's result is the new fd.

        A str name is encoded as os.fsencode does (surrogate escapes give back the original
        bytes).  The kernel completes the open inline when the name's dentry is cached, and
        in an io-wq thread when it must read the disk.
        """
        path = _path(name)
        self._held[tag] = path
        _pack_sqe(self._sqes, self._next(), OP_OPENAT, 0, dirfd, 0, id(path) + _BYTES_DATA, mode, flags, tag)

    def statx(self, dirfd: int, name: str | bytes, flags: int, mask: int, buf: memoryview, tag: int) -> None:
        """statx(dirfd, name, flags, mask) into `buf` (256 writable bytes, struct statx)."""
        if len(buf) < 256:
            raise ValueError("a statx buffer is 256 bytes")
        path = _path(name)
        pin = _from_buffer(buf)
        self._held[tag] = (path, pin)
        at = self._next()
        _pack_sqe(self._sqes, at, OP_STATX, 0, dirfd, _addressof(pin), id(path) + _BYTES_DATA, mask, flags, tag)

    def close_fd(self, fd: int, tag: int) -> None:
        """close(fd) on the ring (IORING_OP_CLOSE)."""
        _pack_sqe(self._sqes, self._next(), OP_CLOSE, 0, fd, 0, 0, 0, 0, tag)

    def uring_cmd(self, fd: int, cmd_op: int, cmd: bytes, tag: int, addr: int = 0, length: int = 0) -> None:
        """IORING_OP_URING_CMD to the driver of `fd`: `cmd_op`, and `cmd` in the SQE's command area
        (16 bytes, 80 on an SQE128 ring), `addr` and `length` as that driver's command defines
        them (FUSE-over-io_uring: an iovec[2] and 2).  A file without commands answers
        -EOPNOTSUPP."""
        if len(cmd) > self._cmd_size:
            raise ValueError(f"a command area holds {self._cmd_size} bytes here, not {len(cmd)}")
        at = self._next()
        _pack_sqe(self._sqes, at, OP_URING_CMD, 0, fd, cmd_op, addr, length, 0, tag)  # cmd_op: the low half of off
        at += abi.SQE_CMD_AT
        self._sqes[at : at + self._cmd_size] = cmd.ljust(self._cmd_size, b"\0")

    def command(self, cmd: struct.Struct) -> Callable[..., None]:
        """A `uring_cmd` for one layout of command, as fast as Python allows: the SQE and the
        command written by one pack_into, `prep(fd, cmd_op, addr, length, tag, *cmd_fields)`.
        The rest of the command area stays as the ring was mapped, zero: nothing else writes it."""
        if abi.SQE_CMD_AT + cmd.size > abi.SQE_CMD_AT + self._cmd_size:
            raise ValueError(f"a command area holds {self._cmd_size} bytes here, not {cmd.size}")
        pack = struct.Struct(abi.SQE_HEAD.format + cmd.format.lstrip("<@=")).pack_into
        sqes, take = self._sqes, self._next

        def prep(fd: int, cmd_op: int, addr: int, length: int, tag: int, *fields: int) -> None:
            pack(sqes, take(), OP_URING_CMD, 0, fd, cmd_op, addr, length, 0, tag, *fields)

        return prep

    # --- submission and completion ---------------------------------------------------------
    def _enter(self, min_complete: int, flags: int) -> None:
        tail = self._tail
        u32 = self._u32
        # The SQEs up to our tail are written (each by its own pack_into call): publishing the
        # tail now is the release the ABI asks for (see the module's docstring), and the kernel
        # reads it inside the syscall that follows, on this thread.
        u32[self._sq_tail] = tail & _U32
        submit = tail - self._head
        if _syscall(abi.SYS_ENTER, self._fd, submit, min_complete, flags, None, 0) < 0:
            err = _get_errno()
            if err not in _RETRY_LATER:
                raise OSError(err, os.strerror(err))
            # EINTR: a signal ended the wait, and its Python handler runs as this call returns
            # to the interpreter (before any other line of this method).
        if submit:
            self._head = tail - ((tail - u32[self._sq_head]) & _U32)  # what the kernel has taken

    def submit(self) -> None:
        """Hand what is prepared to the kernel now (it is otherwise submitted by `wait`).

        The kernel stops a submission at an SQE it refuses (with that SQE's CQE): the rest go in
        the next call, so that all are submitted now, with the caller's credentials of now.
        """
        while self._tail != self._head:
            head = self._head
            self._enter(0, 0)
            if self._head == head:
                return  # the kernel took none now (out of memory): the next wait submits them

    def wait(self, least: int = 1) -> list[tuple[int, int]]:
        """Submit what is prepared, block until at least `least` completions (0: none, only
        what has completed already), and drain them all as (tag, result) pairs.

        A signal may end the wait early: its handler has run by the time this returns, and
        the caller gets what completed meanwhile (possibly nothing) and calls again.
        """
        self._enter(least, abi.ENTER_GETEVENTS)
        if self._tail != self._head:
            self.submit()
        u32 = self._u32
        done: list[tuple[int, int]] = []
        while True:
            head = u32[self._cq_head]
            # Load the tail before the CQEs it covers (the acquire: loads keep their order on x86-64).
            tail = u32[self._cq_tail]
            if tail != head:
                size = self._cqe_size
                start = (head & self._cq_mask) * size
                end = start + ((tail - head) & _U32) * size
                if end - start == size:  # the common case, without a slice
                    done.append(self._unpack_cqe(self._cqes, start))
                elif end <= len(self._cqes):
                    done += self._unpack_cqes(self._cqes[start:end])
                else:  # wrapped around the end of the array
                    done += self._unpack_cqes(self._cqes[start:])
                    done += self._unpack_cqes(self._cqes[: end - len(self._cqes)])
                # The CQEs are read (copied into Python ints above): storing the head gives their
                # slots back to the kernel (the release: a store does not pass earlier loads on x86-64).
                u32[self._cq_head] = tail
            if not u32[self._sq_flags] & abi.SQ_CQ_OVERFLOW:
                return done
            # More completed than the CQ holds: the kernel kept the rest (IORING_FEAT_NODROP) and
            # moves them into the CQ, now that it has room, when we enter with GETEVENTS.
            self._enter(0, abi.ENTER_GETEVENTS)


def address_of(view: memoryview) -> int:
    """Where a writable view's memory starts."""
    return _addressof(_from_buffer(view))


def _path(name: str | bytes) -> bytes:
    """A path as the kernel takes it: bytes (NUL-terminated by CPython), no NUL inside."""
    path = name if name.__class__ is bytes else os.fsencode(name)
    if b"\0" in path:
        raise ValueError("embedded null byte")
    return path


def isolated(check: Callable[[], str | None], timeout: float = 10.0) -> str | None:
    """Run `check` in a forked child and give its answer; a child that crashes (a wrong pointer
    through ctypes is a SIGSEGV) or hangs is an answer too, and never the caller's end."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        return f"io_uring probe could not start: {e.strerror}"
    if pid == 0:  # the child: answer through the pipe, never return into the caller's code
        try:
            os.close(r)
            faulthandler.disable()  # a crash is the parent's to report, in one line
            try:
                answer = check() or ""
            except Unavailable as e:
                answer = str(e)
            except BaseException as e:  # noqa: BLE001 - any failure is the answer
                answer = f"io_uring probe failed: {type(e).__name__}: {e}"
            os.write(w, answer.encode()[: select.PIPE_BUF])
        finally:
            os._exit(0)
    os.close(w)
    try:
        if not select.select([r], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return f"io_uring probe hung for {timeout:g} s"
        answer = os.read(r, select.PIPE_BUF).decode()
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"io_uring probe died of {signal.Signals(os.WTERMSIG(status)).name}"
    return answer or None


def _probe(sqe128: bool = False) -> str | None:
    """Set up a ring as a worker does and run a NOP, an OPENAT and a READV through it."""
    ring = Ring(8, sqe128)
    r, w = os.pipe()
    try:
        os.write(w, b"ok")
        got = bytearray(2)
        ring.nop(1)
        ring.open_path(-100, "/", os.O_PATH | os.O_CLOEXEC, 2)  # AT_FDCWD
        ring.readv(r, memoryview(got), 0, 3)
        done: dict[int, int] = {}
        while len(done) < 3:
            done.update(ring.wait())
        if done[2] >= 0:
            os.close(done[2])
        if done[1] != 0 or done[2] < 0 or done[3] != 2 or got != b"ok":
            return f"io_uring gave wrong results: {done}"
        return None
    finally:
        ring.close()
        os.close(r)
        os.close(w)


def why_unavailable(sqe128: bool = False) -> str | None:
    """None where a ring can be set up with what the worker needs and works, else why not
    (`sqe128`: a ring for FUSE-over-io_uring, URING_CMD included).  The supervisor asks this
    before it starts workers; the check runs in a child process."""
    return isolated(lambda: _probe(sqe128))
