"""What a worker and the watcher run, each in its own process forked by the supervisor's pool.

A worker: build its `Fs` from what INIT agreed and what the filters need, set up its ring and
FUSE-over-io_uring entries, and serve its seat until the connection ends.  The watcher: push
the backing's outside changes to the kernel.  Both are run by `child`, which makes the process
one that SIGTERM stops alone and that sees to a successor when the supervisor dies.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

from fastpass import _linux
from fastpass.config import IDLE_SYNC, MountConfig
from fastpass.filters import stack
from fastpass.fs.attrcache import AttrCache, atime_policy
from fastpass.fs.context import Fs, Kernel
from fastpass.fs.shared import SharedState
from fastpass.fs.table import build
from fastpass.fs.watcher import Watcher
from fastpass.kernel import abi
from fastpass.kernel.init import Negotiated
from fastpass.seat import Seat
from fastpass.shm import warnlog
from fastpass.shm.counters import (
    LOCK_WAITS,
    PID,
    STARTED_NS,
    TRANSPORT,
    TRANSPORT_NAMES,
    WATCHER,
    WorkerCounters,
)
from fastpass.transport.dev import Notifier
from fastpass.transport.entries import Entries, Refused
from fastpass.uring.ring import ENTRIES, Ring, Unavailable
from fastpass.worker import Worker

log = logging.getLogger("fastpass")

ORPHANED = signal.SIGUSR2  # a worker's or the watcher's PR_SET_PDEATHSIG


def child(name: str, orphaned: Callable[[], None], body: Callable[[], None]) -> None:
    """Run a worker's or the watcher's body in a forked child; never returns.

    SIGTERM stops the child alone (the supervisor replaces it where need be).
    ORPHANED comes when the supervisor dies (PR_SET_PDEATHSIG): `orphaned()`
    sees to a successor, so the mount goes on being served (`Pool.orphaned`).
    """
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        def on_term(signo: int, frame: object) -> None:
            raise SystemExit(128 + signo)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(ORPHANED, lambda signo, frame: orphaned())
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _linux.set_pdeathsig(ORPHANED)
        _linux.set_name(name)
        orphaned()  # the supervisor may have died before the signal was asked for
        body()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    except BaseException:
        log.exception("worker failed")
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late SIGTERM must not unwind into supervisor code
        logging.shutdown()
        os._exit(code)


def serve(config: MountConfig, negotiated: Negotiated, seat: Seat, root_fd: int, shared: SharedState,
           filters: list[object], index: int, started: Callable[[], None], entries: Entries | None,
           replacing: bool, orphaned: Callable[[], None], drain: bool = False) -> None:  # fmt: skip
    """A worker: serve requests from its seat's clone of the device fd until the connection ends,
    and from its FUSE-over-io_uring entries where `entries` are given (taken over from the worker
    it replaces, if `replacing`), after answering what a killed predecessor left in them;
    `drain`: only that (`Worker`).

    `started()` tells the supervisor that it is set up and about to serve; `orphaned()`, called
    every IDLE_SYNC seconds, sees to a successor if the supervisor has died (a worker adopted by
    a successor has no live parent to send it PR_SET_PDEATHSIG).
    """
    devfd = seat.devfd
    os.umask(0)  # creating calls run under the caller's umask (FUSE_DONT_MASK), nothing else uses one
    warnlog.attach(shared.warnings, shared.region, index)
    routes, needs = stack.install(build(), filters)
    kernel = Kernel(devfd, Notifier(devfd), negotiated.has(abi.InitFlag.PASSTHROUGH),
                    negotiated.has(abi.InitFlag.WRITEBACK_CACHE), negotiated.minor >= abi.NOTIFY_PRUNE_MINOR)  # fmt: skip
    fs = Fs(config, root_fd, shared, index, kernel, needs)
    shared.region.count_waits(fs.counters.misc[LOCK_WAITS:])
    fs.counters.misc[PID] = os.getpid()
    fs.counters.misc[STARTED_NS] = time.time_ns()
    ring = None
    share = entries.share(index) if entries is not None else None
    if config.io == "uring":
        try:
            # A slot has one call out, or a READDIRPLUS batch (about 25 for a 4 KiB reply): room for
            # a few batches' completions without overflow (which the kernel would hold back anyway).
            ring = Ring(max(ENTRIES, len(seat.pool), 2 * len(share or ())), sqe128=share is not None)
        except Unavailable as e:  # the supervisor's probe passed: say why this worker differs
            if share is not None:  # the kernel holds every request until this worker's queues have entries
                log.error("worker %d: io_uring unavailable (%s): cannot take its FUSE-over-io_uring queues", index, e)
                raise SystemExit(1) from None
            log.warning("worker %d: io_uring unavailable (%s): serving with plain syscalls", index, e)
    flush_failed: set[str] = set()
    idle = (lambda: stack.flush(filters, flush_failed)) if filters else None
    worker = Worker(seat, fs, routes, config.allow_other, config.debug, idle, ring, share, drain)
    if share is not None:
        _pin(share.cpus())
        try:
            if worker.entries.take(required=config.transport == "uring"):  # type: ignore[union-attr]
                fs.counters.misc[TRANSPORT] = TRANSPORT_NAMES.index("uring")
        except Refused as e:
            log.error("worker %d: %s", index, e)
            raise SystemExit(1) from None
    def every_second(signo: int, frame: object) -> None:
        worker.idle_sync()
        orphaned()

    signal.signal(signal.SIGALRM, every_second)
    signal.setitimer(signal.ITIMER_REAL, IDLE_SYNC, IDLE_SYNC)
    fs.fds.settle()
    started()
    if share is not None and replacing:
        worker.entries.kick(config.mountpoint)  # type: ignore[union-attr]
    try:
        worker.serve()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        stack.flush(filters, flush_failed)  # what the filters buffered (audit lines) goes out before exit


def _pin(cpus: list[int]) -> None:
    """Run on the CPUs whose callers this worker serves (its queues'), as far as we may run there.

    The caller sleeps while its request is served, so the worker has its CPU and its caches.
    Measured on this project's 2-core machine, 2 workers, 4 clients (2 per CPU) creating,
    writing, stating, reading and unlinking files for 3 s, 4 alternating rounds (with another
    test run busy): 4,232-5,051 rounds pinned, 3,098-3,961 unpinned, 3,148-3,594 on /dev/fuse.
    """
    allowed = os.sched_getaffinity(0)
    if (mine := allowed & set(cpus)) and mine != allowed:
        os.sched_setaffinity(0, mine)


def watcher(config: MountConfig, session: int, root_fd: int, shared: SharedState, fan_fd: int,
             started: Callable[[], None]) -> None:  # fmt: skip
    """The watcher: push changes other processes make in the backing to the kernel."""
    warnlog.attach(shared.warnings, shared.region, WATCHER)
    counters = WorkerCounters(shared.counters, shared.region, WATCHER)
    shared.region.count_waits(counters.misc[LOCK_WAITS:])
    counters.misc[PID] = os.getpid()
    counters.misc[STARTED_NS] = time.time_ns()
    cache = (AttrCache(shared.attrs, shared.region, counters.misc, config.revalidate, atime_policy(root_fd))
             if config.cache == "auto" else None)  # fmt: skip
    pids = [WorkerCounters(shared.counters, shared.region, i).misc
            for i in range(max(config.workers, config.max_workers))]  # as many as `fastpass workers` may set
    supervisor = os.getppid()

    def own(pid: int) -> bool:
        return pid == supervisor or any(misc[PID] == pid for misc in pids)

    watcher = Watcher(fan_fd, Notifier(session), config.backing, shared.inodes, shared.region, cache, own, counters.misc,
                      evict=config.writeback_cache)  # fmt: skip
    started()
    watcher.run(config.mountpoint if config.default_permissions else None)


