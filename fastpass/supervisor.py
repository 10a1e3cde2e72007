"""The supervisor: checks, mounts, answers INIT, runs the worker pool, owns shutdown.

Size: over 500 lines: the pool's life (start, replacement, resize, succession when
the supervisor dies, restart hand-over, shutdown) is one state machine over the same
fields, and the start-up that leads into it (what needs the system to be checked, the
mount, INIT) hands it those fields; the option rules are config's (`config.RULES`), and
the worker's and watcher's bodies are `fastpass.processes`'.

Process layout: the supervisor keeps the session's device fd for the whole
mount and the shared tables (`fastpass.fs.shared`); each worker is a forked
process that serves requests from its own clone of the device fd
(FUSE_DEV_IOC_CLONE), so the kernel hands each request to whichever worker
is free.  Fork rather than spawn: a worker needs nothing but the fds, the
shared mapping and the config the supervisor already holds, and starts in
a millisecond.  The supervisor makes each index's clone, request buffers
and journal (`fastpass.seat`) and keeps them, so the requests a killed
worker had read stay with the kernel, and the replacement it starts at the
same index (on the same counters) answers them: a worker's death costs its
callers nothing (`fastpass.shm.journal`).

Shutdown: SIGTERM or SIGINT to the supervisor unmounts (lazily if busy),
after telling systemd STOPPING=1 where it listens (`fastpass.systemd`).
Once unmounted, by the supervisor or by `umount` from outside, the kernel
ends the connection, each worker's read returns ENODEV after it has answered
what it was serving, and the supervisor exits when they all have.

A supervisor that dies is succeeded: its workers serve on, and one of them
forks a successor that adopts the pool, from the copy of it every worker
holds (`Pool.orphaned`).  The mount is never detached under its users for
lack of a supervisor: after a lazy detach, their writes by path would land
in the directory underneath.

Start-up is answered once every first worker is set up (see `Pool`), and a
failed one leaves nothing mounted: before serving, the supervisor unmounts
after any failure of its own or of a worker; should it die unheard, the
waiting `fastpass mount` detaches the mount (`fastpass.startup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import logging
import mmap
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable

import msgspec
import uvloop

from fastpass import _linux, processes, restart, startup, state, stats, systemd
from fastpass.config import (
    MAX_WORKERS,
    MountConfig,
    problem,
    resolve,
)
from fastpass.filters import load
from fastpass.fs.fds import raise_limit
from fastpass.fs.inodes import can_reopen
from fastpass.fs.shared import DEFAULT_MAX_HANDLES, SharedState
from fastpass.fs.slots import handle_of
from fastpass.fs.watcher import open_watch
from fastpass.kernel import abi, mount
from fastpass.kernel.init import KERNEL_PERMISSIONS, KernelTooOld, Negotiated, negotiate
from fastpass.seat import Seat
from fastpass.shm import warnlog
from fastpass.shm.control import Control, start_time
from fastpass.shm.counters import PID, WATCHER, WorkerCounters
from fastpass.shm.region import LOCK_SUCCESSION
from fastpass.transport import entries as rings
from fastpass.transport.entries import Entries
from fastpass.uring.ring import why_unavailable

log = logging.getLogger("fastpass")


# The kernel takes FUSE-over-io_uring entries back only when their ring ends, and fails the requests it
# has just handed them (ECANCELED): a worker on the ring cannot leave without client errors.
RESIZE_REFUSED_ON_RINGS = ("requests come from FUSE-over-io_uring entries, which a worker cannot give back without "
                           "the kernel failing the requests handed to them: change the count on --transport dev, "
                           "or remount with --workers N")  # fmt: skip
MAX_RESTARTS = 10  # deaths of young workers tolerated within RESTART_WINDOW seconds before giving up
RESTART_WINDOW = 10.0
YOUNG = 0.25  # s: a worker that dies younger counts toward a crash loop (one killed later is just replaced)

WATCHER_NAME = "fastpass-watch"  # process names, as ps shows them
SUPERVISOR_NAME = "fastpass"  # a successor's (the first supervisor keeps its command's)
WORKER_NAME = "fastpass-w{}"


class StartError(Exception):
    """The mount cannot start; the message is one line for the user."""


def check(config: MountConfig) -> None:
    """Refuse bad input before anything is mounted."""
    backing, mnt = config.backing, config.mountpoint
    if not os.path.exists(backing):
        raise StartError(f"backing directory {backing} does not exist")
    if not os.path.isdir(backing):
        raise StartError(f"backing {backing} is not a directory")
    try:
        os.close(os.open(backing, os.O_RDONLY | os.O_DIRECTORY))
    except PermissionError:
        raise StartError(f"backing directory {backing} is not readable") from None
    try:
        os.stat(mnt)
    except FileNotFoundError:
        raise StartError(f"mountpoint {mnt} does not exist") from None
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise StartError(f"mountpoint {mnt}: {e.strerror}") from None
        raise StartError(f"mountpoint {mnt} is a dead FUSE mount (its server is gone): clear it with "
                         f"`fastpass unmount {mnt}` (or `umount -l {mnt}`, or `fusermount3 -uz {mnt}` "
                         "as its user)") from None  # fmt: skip
    if not os.path.isdir(mnt):
        raise StartError(f"mountpoint {mnt} is not a directory")
    real_b, real_m = os.path.realpath(backing), os.path.realpath(mnt)
    if real_m == real_b or real_m.startswith(real_b.rstrip("/") + "/"):
        raise StartError(f"mountpoint {mnt} is inside the backing directory {backing}: the mount would serve itself")
    if mount.is_mountpoint(mnt):
        raise StartError(f"mountpoint {mnt} is already a mount point")
    if not config.nonempty and os.listdir(mnt):
        raise StartError(f"mountpoint {mnt} is not empty (use --nonempty to mount over it anyway)")
    if not os.path.exists(mount.DEVICE):
        raise StartError(f"no {mount.DEVICE}: load the fuse module (modprobe fuse)")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise StartError("not root and fusermount3 not found: install fuse3 or run as root")
    if (why := problem(config, os.geteuid() == 0)) is not None:
        raise StartError(why)
    if config.engine == "pyfuse3" and importlib.util.find_spec("pyfuse3") is None:
        raise StartError("--engine pyfuse3 needs pyfuse3: pip install 'fastpass[pyfuse3]' "
                         "(it builds against libfuse3-dev and pkg-config)")  # fmt: skip
    if (why := rings.refusal(config.transport)) is not None:
        raise StartError(why)
    if config.workers > 1 and not _handles_reopen(backing):
        why = "not root" if os.geteuid() != 0 else f"the filesystem of {backing} has no usable file handles"
        raise StartError(f"--workers {config.workers} needs workers to reopen inodes by file handle, and {why}: "
                         "use --workers 1")  # fmt: skip


def _handles_reopen(backing: str) -> bool:
    """Whether open_by_handle_at works for this backing (root, and a filesystem that exports handles)."""
    try:
        fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        handle, _ = handle_of(fd)
        return handle is not None and can_reopen(fd, handle)
    finally:
        os.close(fd)


def _room(config: MountConfig) -> MountConfig:
    """The config with `max_workers` resolved: twice the CPUs, at least `workers`; `workers` alone
    where more than one cannot serve (the pyfuse3 engine; no reopening by handle)."""
    if config.max_workers:
        return config
    alone = config.engine == "pyfuse3" or not _handles_reopen(config.backing)
    room = config.workers if alone else min(MAX_WORKERS, max(config.workers, 2 * (os.cpu_count() or 1)))
    return msgspec.structs.replace(config, max_workers=room)


def _answer_init(session: int, config: MountConfig, rings: bool) -> Negotiated:
    """Read FUSE_INIT from the new connection and answer it; FUSE_OVER_IO_URING with `rings`."""
    raw = os.read(session, abi.MIN_READ_BUFFER + abi.IN_HEADER.size + abi.WRITE_IN.size)
    _len, opcode, unique, *_ = abi.IN_HEADER.unpack_from(raw)
    if opcode != abi.Opcode.INIT:
        raise StartError(f"kernel sent opcode {opcode} before INIT")
    init_in = abi.INIT_IN.unpack_from(raw, abi.IN_HEADER.size)
    extra = abi.InitFlag.PASSTHROUGH if config.passthrough != "off" and os.geteuid() == 0 else 0
    if config.default_permissions:
        extra |= KERNEL_PERMISSIONS
    if rings:
        extra |= abi.InitFlag.OVER_IO_URING
    if config.writeback_cache:
        extra |= abi.InitFlag.WRITEBACK_CACHE
    # A backing that is itself stacked (overlayfs, FUSE) needs depth 2 for passthrough.
    depth = 2 if mount.fstype_of(config.backing).split(".")[0] in ("overlay", "fuse", "fuseblk") else 1
    try:
        body, negotiated = negotiate(init_in, extra, depth)
    except KernelTooOld as e:
        os.write(session, abi.OUT_HEADER.pack(16, -71, unique))  # EPROTO ends the connection
        raise StartError(str(e)) from None
    os.write(session, abi.OUT_HEADER.pack(16 + len(body), 0, unique) + body)
    if config.passthrough == "on" and not negotiated.has(abi.InitFlag.PASSTHROUGH):
        raise StartError("--passthrough on: the kernel does not offer FUSE passthrough "
                         "(Linux 6.9+ built with CONFIG_FUSE_PASSTHROUGH)")  # fmt: skip
    return negotiated


def _detach(mountpoint: str, ours: mount.MountEntry | None = None) -> None:
    """Unmount, lazily if busy; given `ours`, only that mount.

    Every orphaned worker tries, so another may have detached it a moment
    ago, and someone else may have mounted there since.
    """
    if ours is not None and not mount.is_same(mountpoint, ours):
        return
    try:
        mount.unmount(mountpoint)
    except (OSError, mount.MountError) as e:
        if ours is None or mount.is_same(mountpoint, ours):  # else another process just detached it
            log.warning("could not unmount %s: %s", mountpoint, e)


def run(config: MountConfig, ready: Callable[[str | None], None],
        mounted: Callable[[mount.MountEntry | None], None] = lambda entry: None) -> int:  # fmt: skip
    """Mount and serve until unmounted; `ready(None)` once serving, `ready(message)` on failure.

    `mounted(entry)` comes first, as soon as the mount exists: whoever waits for
    `ready` then knows which mount to detach should this process die unheard.
    """
    try:
        check(config)
        config = _room(config)
        config, no_rings = _rings(config)  # before the filters, whose fork hooks are for workers
        try:
            filters = load.load_all(config.filters)  # once, here: the workers inherit them
        except load.SpecError as e:
            raise StartError(str(e)) from None
        root_fd = os.open(config.backing, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if config.engine == "pyfuse3":
            from fastpass import pyfuse3_engine  # an optional extra: imported only when asked for

            config, fan_fd = _coherence(_fd_limit(config))
            return pyfuse3_engine.run(config, ready, mounted, fan_fd, root_fd, _shared(root_fd, config), filters)
        with rings.offered(config.transport):
            try:
                session = mount.mount(config.source(), config.mountpoint, config.subtype, config.mount_options())
            except mount.MountError as e:
                raise StartError(str(e)) from None
            ours = mount.mount_entry(config.mountpoint)
            mounted(ours)
            try:
                pool = _prepare(config, session, root_fd, filters, ours, no_rings)
            except BaseException:  # whatever failed, no dead mount stays behind
                _detach(config.mountpoint)
                os.close(session)
                raise
    except StartError as e:
        ready(str(e))
        return 1
    return pool.serve(ready)


def _fd_limit(config: MountConfig) -> MountConfig:
    """Raise this process's fd limit (the workers inherit it) and say what it is; the config with
    the per-user share resolved."""
    limit, nr_open = raise_limit()
    log.info("file descriptors: up to %d per process%s", limit,
             "" if limit >= nr_open else f" (fs.nr_open is {nr_open}: raising the hard limit needs CAP_SYS_RESOURCE)")
    if config.allow_other and not config.max_open_per_user:
        config = msgspec.structs.replace(config, max_open_per_user=max(1, min(limit, DEFAULT_MAX_HANDLES) // 2))
    return config


def _rings(config: MountConfig) -> tuple[MountConfig, str | None]:
    """io_uring as the workers will have it, probed in children before anything is mounted: the
    config with --io resolved, and why requests cannot come from FUSE-over-io_uring entries
    (None: they can, where the kernel offers them)."""
    no_rings = None
    if config.transport != "dev":
        no_rings = "the workers do not use io_uring (--io plain)" if config.io != "uring" else why_unavailable(sqe128=True)
        if no_rings is not None and config.transport == "uring":
            raise StartError(f"--transport uring: io_uring unavailable ({no_rings})")
    if config.io == "uring" and (config.transport == "dev" or no_rings) and (why := why_unavailable()) is not None:
        log.warning("io_uring unavailable (%s): workers serve with plain syscalls", why)
        config = msgspec.structs.replace(config, io="plain")
        no_rings = "the workers do not use io_uring"
    return config, no_rings


def _prepare(config: MountConfig, session: int, root_fd: int, filters: list[object],
             ours: mount.MountEntry | None, no_rings: str | None) -> Pool:  # fmt: skip
    """Answer INIT on the new mount and make ready what its workers share (`no_rings`: see `_rings`)."""
    # Once INIT agrees FUSE_OVER_IO_URING, the kernel holds every new request until each queue
    # has an entry (fuse_block_alloc, since 6.14): agree it only where the workers will register.
    negotiated = _answer_init(session, config, rings=config.transport != "dev" and no_rings is None)
    log.info("mounted %s on %s (protocol 7.%d)", config.backing, config.mountpoint, negotiated.minor)
    config = _fd_limit(config)  # here, not before: a start that fails earlier has nothing to say of it
    if os.geteuid() == 0:
        mount.set_readahead(config.mountpoint, negotiated.max_write // 1024)
    config, fan_fd = _coherence(config)
    entries = None
    if config.transport != "dev":
        if no_rings is None and not negotiated.has(abi.InitFlag.OVER_IO_URING):
            no_rings = f"the kernel does not offer FUSE-over-io_uring ({rings.PARAMETER} is N)"
            if rings.enabled() is None:
                no_rings = "this kernel has no FUSE-over-io_uring (Linux 6.14+ built with CONFIG_FUSE_IO_URING)"
            if config.transport == "uring":
                raise StartError(f"--transport uring: {no_rings}")
        if no_rings is not None:
            log.info("requests from /dev/fuse: %s", no_rings)
        else:
            queues = rings.possible_cpus()
            # The kernel's max_payload_sz: what a request or reply may carry besides its headers.
            payload = max(abi.MIN_READ_BUFFER, negotiated.max_write, negotiated.max_pages * mmap.PAGESIZE)
            entries = Entries(queues, config.workers, config.queue_depth, payload)
            log.info("requests from FUSE-over-io_uring: %d queues, %d entries per queue and worker", queues,
                     config.queue_depth)  # fmt: skip
    record = state.MountState(os.getpid(), config, negotiated, time.time())
    state.write(record)
    return Pool(config, session, root_fd, _shared(root_fd, config), record, fan_fd, filters, ours, entries)


def _coherence(config: MountConfig) -> tuple[MountConfig, int]:
    """The fanotify fd of the watcher (-1 without one) and the config resolved for it."""
    fan_fd = -1
    if config.cache == "auto" and not config.revalidate:
        watch = open_watch(config.backing, mount.fstype_of(config.backing))
        if isinstance(watch, str):
            log.info("not watching the backing for changes (%s): revalidating by time", watch)
        else:
            fan_fd = watch
    return resolve(config, fan_fd >= 0), fan_fd


def _shared(root_fd: int, config: MountConfig) -> SharedState:
    """The mount's shared tables; this process's warnings are kept there for `stats` from now on."""
    shared = SharedState(root_fd, config.max_inodes, config.cache_size if config.cache == "auto" else 0)
    warnlog.attach(shared.warnings, shared.region, warnlog.SUPERVISOR)
    return shared


class Pool:
    """The workers of one mount and the supervisor's control loop around them.

    The loop (asyncio on uvloop) takes SIGTERM/SIGINT (unmount), worker exits
    (each worker's pidfd turns readable: reap, replace a crashed one), and
    `fastpass stats` requests on a unix socket beside the mount's state record.

    Start-up ends when every first worker (and the watcher) has set itself up:
    each adds 1 to an eventfd just before it serves, and `ready(None)` follows
    the last.  One that exits before that is a failed start, not a crash to
    replace: the supervisor unmounts and `ready` says who died, and how.
    """

    def __init__(self, config: MountConfig, session: int, root_fd: int, shared: SharedState,
                 record: state.MountState, fan_fd: int, filters: list[object],
                 ours: mount.MountEntry | None, entries: Entries | None = None):  # fmt: skip
        self.config = config
        self.entries = entries  # the workers' FUSE-over-io_uring entries; None: requests from /dev/fuse
        self.ours = ours  # the mount this pool serves, as mountinfo showed it just after mounting
        self.session = session
        self.root_fd = root_fd
        self.shared = shared
        self.record = record
        self.fan_fd = fan_fd  # the watcher's fanotify fd, -1 without one
        self.filters = filters  # loaded once here; every worker inherits them
        self.workers: dict[int, int] = {}  # pid -> worker index (WATCHER for the watcher)
        self.born: dict[int, float] = {}  # pid -> when it was forked (monotonic)
        self.seats: dict[int, Seat] = {}  # worker index -> what its workers inherit, one after the other
        self.control = Control(shared.control, shared.region)  # who supervises (fastpass.shm.control)
        self.stopping = False
        self.abandoned = False  # nothing could serve: the mount is left dead, not detached
        self.failed = False
        self._rolling: list[int] = []  # a restart's: the pids to replace by workers running the new code
        self._replacing: dict[int, asyncio.Future[int]] = {}  # pid told to stop -> its replacement's pid
        self._retiring: set[int] = set()  # pids told to stop for good (`resize`), and drainers of their seats
        self.restarts = 0
        self._recent: list[float] = []
        self._done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # workers count themselves in
        self._starting = 0  # processes of the first start that have not counted themselves in yet
        self._ready: Callable[[str | None], None] | None = None  # until the start is answered

    def start_worker(self, index: int, replacing: bool = False, drain: bool = False) -> int:
        """Fork worker `index`, or the watcher for index WATCHER (`replacing` a dead one; `drain`:
        only to answer what a retired one left in its seat, then exit).

        The child keeps every fd and mapping of this pool (every seat, the session fd), and this
        pool object itself: should the supervisor die, any worker can fork its successor."""
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)  # the control loop's wakeup pipe is the supervisor's, not ours
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            config, shared = self.config, self.shared
            started = lambda: os.eventfd_write(self._started, 1)
            try:
                if index == WATCHER:
                    processes.child(WATCHER_NAME, self.orphaned,
                           lambda: processes.watcher(config, self.session, self.root_fd, shared, self.fan_fd, started))  # fmt: skip
                else:
                    processes.child(WORKER_NAME.format(index), self.orphaned,
                           lambda: processes.serve(config, self.record.negotiated, self.seats[index], self.root_fd, shared,
                                          self.filters, index, started, self.entries, replacing, self.orphaned,
                                          drain))  # fmt: skip
            finally:
                os._exit(1)  # never return into the supervisor's code
        self.workers[pid] = index
        self.born[pid] = time.monotonic()
        if self._loop is not None:
            self._watch(pid)
        return pid

    def orphaned(self) -> None:
        """In a worker or the watcher: if the supervisor is gone, see that another takes its place.

        Under one lock, the first process to find it gone forks a successor (through a middle
        process, so the successor is nobody's child to reap) and records it; the others find a
        live supervisor and go on.  One that died before the start was answered leaves the
        mount to the waiting `fastpass mount` (`fastpass.startup`): this process detaches it
        too, and exits."""
        if self.control.supervisor() is not None:
            return
        if not self.control.serving():
            _detach(self.config.mountpoint, self.ours)
            state.remove(self.config.mountpoint)
            raise SystemExit(0)
        region = self.shared.region
        region.lock(LOCK_SUCCESSION)
        try:
            if self.control.supervisor() is not None:
                return  # another process was first
            dead = self.control.recorded()
            middle = os.fork()
            if middle == 0:
                code = 1
                try:
                    successor = os.fork()
                    if successor == 0:
                        self._take_over(dead)
                    self.control.record(successor)
                    code = 0
                finally:
                    os._exit(code)
            os.waitpid(middle, 0)
        finally:
            region.unlock(LOCK_SUCCESSION)

    def _take_over(self, dead: int) -> None:
        """In a successor: become the mount's supervisor, with this copy of the dead one's pool,
        the workers it left (adopted: watched by pidfd, not reaped) and new ones where they died;
        never returns."""
        code = 1
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, processes.ORPHANED, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            _linux.set_pdeathsig(0)
            _linux.set_name(SUPERVISOR_NAME)
            os.setsid()
            self._shed()
            if (now := state.read(self.config.mountpoint)) is not None:  # the worker count as last changed
                self.config = msgspec.structs.replace(self.config, workers=now.config.workers)
            self.record = msgspec.structs.replace(self.record, config=self.config, pid=os.getpid())
            state.write(self.record)
            systemd.notify(f"MAINPID={os.getpid()}")
            self.workers, self.born, self._recent, self._retiring = {}, {}, [], set()
            self._ready, self.stopping, self.failed = None, False, False
            self._loop = self._done = None  # the dead one's, copied: this process runs a loop of its own
            indexes = [*range(self.config.workers), *([WATCHER] if self.fan_fd >= 0 else [])]
            for index in indexes:
                pid = WorkerCounters(self.shared.counters, self.shared.region, index).misc[PID]
                if pid and start_time(pid) is not None:
                    self.workers[pid], self.born[pid] = index, 0.0
            log.warning("the supervisor (pid %d) is gone: pid %d took its place, with workers %s", dead, os.getpid(),
                        sorted(self.workers))  # fmt: skip
            for index in set(indexes) - set(self.workers.values()):
                log.error("%s %d was gone too; replaced by %d", "watcher" if index == WATCHER else "worker", index,
                          self.start_worker(index, replacing=True))  # fmt: skip
            for index in range(self.config.workers, len(self.seats)):  # one retired as the other died
                if self.seats[index].unanswered() and index not in self.workers.values():
                    self._retiring.add(self.start_worker(index, replacing=True, drain=True))
            code = self._supervise()
        except BaseException:
            log.exception("the successor supervisor failed")
        finally:
            logging.shutdown()
            os._exit(code)

    def _shed(self) -> None:
        """In a successor: let go of what it inherited from the worker that forked it and is not
        the pool's: that worker's backing fds (an unlinked file's blocks), pidfds and above all its
        io_uring, whose fd and mappings would keep the ring alive after that worker dies, and the
        kernel then leaves requests handed to the ring's entries unanswered."""
        keep = {0, 1, 2, self.session, self.root_fd, self.fan_fd, self.shared.region.fd, self.shared.inodes.fd,
                self._started,
                *(f for s in self.seats.values() for f in (s.devfd, s.pool.fd, s.journal.fd)),
                *(h.stream.fileno() for h in logging.getLogger().handlers if hasattr(h, "stream"))}  # fmt: skip
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        with open("/proc/self/maps") as maps:
            rings = [line.split()[0] for line in maps if line.rstrip().endswith("anon_inode:[io_uring]")]
        for span in rings:
            start, end = (int(x, 16) for x in span.split("-"))
            _linux.munmap(start, end - start)

    def _watch(self, pid: int) -> None:
        """Call `reap` when the worker exits: its pidfd becomes readable (uvloop keeps SIGCHLD)."""
        assert self._loop is not None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already (an adopted worker)
            self._loop.call_soon(self.reap)
            return

        def exited() -> None:
            self._loop.remove_reader(pidfd)  # type: ignore[union-attr]
            os.close(pidfd)
            self.reap()

        self._loop.add_reader(pidfd, exited)

    def stop(self, why: str, answer: str | None = None) -> None:
        """Unmount; a start not answered yet fails with `answer` (default: stopped by `why`)."""
        if not self.stopping:
            self.stopping = True
            systemd.notify("STOPPING=1")
            log.info("%s: unmounting %s", why, self.config.mountpoint)
            _detach(self.config.mountpoint, self.ours)
        self._answer(answer or f"stopped by {why} during start-up")

    def abandon(self, why: str) -> None:
        """Nothing can serve: end the connection but leave the mount in place, dead (every access
        ENOTCONN, as libfuse leaves it), never detached under the programs that use it."""
        if self.stopping:
            return
        self.stopping = self.abandoned = True
        systemd.notify("STOPPING=1")
        log.error("%s: nothing can serve %s; the mount stays, dead (Transport endpoint is not connected), until "
                  "`fastpass unmount %s` clears it", why, self.config.mountpoint, self.config.mountpoint)  # fmt: skip
        for pid in self.workers:  # each holds the device fds: the connection ends when the last closes
            os.kill(pid, signal.SIGTERM)

    def _answer(self, error: str | None) -> None:
        if self._ready is not None:
            ready, self._ready = self._ready, None
            ready(error)

    def _count_started(self) -> None:
        """The start succeeded once every process of it has counted itself in."""
        try:
            self._starting -= os.eventfd_read(self._started)
        except BlockingIOError:
            return
        if self._starting <= 0:
            self._loop.remove_reader(self._started)  # type: ignore[union-attr]
            self.control.serve()
            self._answer(None)

    def reap(self) -> None:
        for pid in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # adopted from a dead supervisor: how it ended is its reaper's to know
                if start_time(pid) is not None:
                    continue
                ended = not mount.is_ours(self.config.mountpoint, self.config.source(), self.config.subtype)
                done, status = pid, 0 if ended else signal.SIGKILL  # the connection's end, or a crash
            if done == 0:
                continue
            index = self.workers.pop(pid)
            born = self.born.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self._ready is not None and not self.stopping:
                who = "the watcher" if index == WATCHER else f"worker {index}"
                why = f"{who} (pid {pid}) {startup.exit_cause(status)} during start-up"
                log.error("%s", why)
                self.failed = True
                self.stop("start-up failed", why)
                continue
            if pid in self._retiring:
                self._retiring.discard(pid)
                if not self.stopping and self.seats[index].unanswered():  # stopped amid a request: answer it
                    drainer = self.start_worker(index, replacing=True, drain=True)
                    self._retiring.add(drainer)
                    log.info("retired worker %d left requests unanswered: drainer %d answers them", pid, drainer)
                continue
            serving = any(i != WATCHER for i in self.workers.values())
            if code == 0 or self.stopping or (index == WATCHER and not serving):
                continue  # the connection ended (unmount): the others follow
            now = time.monotonic()
            self._recent = [t for t in self._recent if now - t < RESTART_WINDOW] + ([now] if now - born < YOUNG else [])
            ours = mount.is_ours(self.config.mountpoint, self.config.source(), self.config.subtype)
            if len(self._recent) > MAX_RESTARTS or not ours:
                log.error("worker %d exited with %d; %d workers died younger than %.2f s in %.0f s: giving up", pid,
                          code, len(self._recent), YOUNG, RESTART_WINDOW)  # fmt: skip
                self.failed = True
                self.abandon("worker crash loop") if ours and self._ready is None else self.stop("worker crash loop")
                continue
            if pid in self._replacing:  # a restart's: the new code takes the seat
                self._replacing.pop(pid).set_result(self.start_worker(index, replacing=True))
                continue
            self.restarts += 1
            log.error("%s %d exited with %d; replaced by %d", "watcher" if index == WATCHER else "worker", pid, code,
                      self.start_worker(index, replacing=True))  # fmt: skip
        if set(self.workers.values()) == {WATCHER}:
            for pid in self.workers:  # the connection ended: nothing left to watch for
                os.kill(pid, signal.SIGTERM)
        if not self.workers and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def stats(self) -> bytes:
        pids = {index: pid for pid, index in self.workers.items()}
        return stats.snapshot(self.shared, self.config.workers, pids, self.restarts, self.record,
                              self.entries.requests_per_queue() if self.entries is not None else [],
                              len(self.seats))  # fmt: skip

    def resize(self, n: int) -> tuple[bytes, Callable[[], None] | None]:
        """`fastpass workers MOUNTPOINT N`: serve with `n` workers from now on; "ok" or why not.

        More: new workers at the next indexes, whose seats were made at mount.  Fewer: the
        workers at the top indexes get SIGTERM and are not replaced; one stopped amid a request
        leaves it in its seat (its device clone keeps it from the kernel's other readers), so a
        drainer at that index answers it as a replacement would (`fastpass.shm.journal`), reads
        nothing new, and exits.  Either way no request is lost or served twice."""
        if self.entries is not None:
            return f"refused: {RESIZE_REFUSED_ON_RINGS}\n".encode(), None
        if (busy := self._busy()) is not None:
            return busy, None
        if not 1 <= n <= len(self.seats):
            return (f"refused: this mount has room for 1 to {len(self.seats)} workers (--max-workers, set when it "
                    "was mounted)\n").encode(), None  # fmt: skip
        return b"ok\n", lambda: self._resize(n)

    def _resize(self, n: int) -> None:
        was = self.config.workers
        by_index = {index: pid for pid, index in self.workers.items()}
        for index in range(was, n):
            self.start_worker(index)
        for index in range(n, was):
            if (pid := by_index.get(index)) is not None:
                self._retiring.add(pid)
                os.kill(pid, signal.SIGTERM)
        self.config = msgspec.structs.replace(self.config, workers=n)
        self.record = msgspec.structs.replace(self.record, config=self.config)
        state.write(self.record)  # where `stats`, a restart and a successor find the count
        if n != was:
            log.info("workers: %d -> %d", was, n)

    async def _control(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
        for pid in self.workers:
            self._watch(pid)
        async with stats.serving(self.config.mountpoint, self.stats, self._restart, self.resize):
            loop.add_reader(self._started, self._count_started)
            self.reap()  # a worker may have died before the handler was in place
            roll = loop.create_task(self._roll()) if self._rolling else None
            await self._done
            if roll is not None:
                roll.cancel()

    def _busy(self) -> bytes | None:
        """The refusal of a restart or a change of the worker count while another change is under way."""
        if self._rolling or self._retiring or self._ready is not None or self.stopping:
            return b"refused: a start, a restart, a change of the worker count or the unmount is under way\n"
        return None

    def _restart(self) -> tuple[bytes, Callable[[], None] | None]:
        """`fastpass restart`: the new code probed, then executed in this process (`fastpass.restart`)
        once the answer is sent; or why not, with nothing changed."""
        if (busy := self._busy()) is not None:
            return busy, None
        if self.entries is not None:
            return f"refused: {restart.REFUSED_ON_RINGS}\n".encode(), None
        prepared = restart.prepare(restart.Handover(
            restart.FORMAT, self.record, list(self.ours) if self.ours is not None else None, self.session,
            self.root_fd, self.fan_fd, self.shared.region.fd, self.shared.inodes.fd,
            [restart.SeatFds(i, s.devfd, len(s.pool), s.journal.slots - len(s.pool), s.pool.fd, s.journal.fd)
             for i, s in sorted(self.seats.items())],
            dict(self.workers), self.restarts,
        ))  # fmt: skip
        if isinstance(prepared, str):
            log.warning("restart refused: %s", prepared)
            return f"refused: {prepared}\n".encode(), None
        return b"ok\n", lambda: restart.execute(*prepared)

    def resume(self, workers: dict[int, int]) -> int:
        """In this process, after `fastpass restart` executed the new code here: adopt the pool's
        processes (still this process's children), replace each by one running this code, one at
        a time, and supervise until the mount ends."""
        self.control.record(os.getpid())
        self.workers = dict(workers)
        self.born = dict.fromkeys(workers, 0.0)
        self._rolling = sorted(workers, key=lambda pid: workers[pid])
        log.info("restart: pid %d runs the new code; replacing %s", os.getpid(), self._rolling)
        return self._supervise()

    async def _roll(self) -> None:
        """Stop each old process and wait for its replacement to serve, one after the other."""
        assert self._loop is not None
        for pid in self._rolling:
            if pid not in self.workers:
                continue  # died meanwhile: replaced already
            index = self.workers[pid]
            self._replacing[pid] = done = self._loop.create_future()
            os.kill(pid, signal.SIGTERM)
            new = await done
            misc = WorkerCounters(self.shared.counters, self.shared.region, index).misc
            for _ in range(500):  # it says it serves by its pid in its counters
                if misc[PID] == new or self.stopping:
                    break
                await asyncio.sleep(0.01)
        self._rolling = []
        log.info("restart: every process runs the new code")

    def serve(self, ready: Callable[[str | None], None]) -> int:
        """Run the workers until the mount ends; returns the exit code.  `ready` as for `run`."""
        self._ready = ready
        self.control.record(os.getpid())
        depth = self.config.io_depth if self.config.io == "uring" else 1
        room = self.config.workers if self.entries is not None else max(self.config.workers, self.config.max_workers)
        for index in range(room):  # every seat before any fork: each worker has them all
            entries = len(self.entries.share(index)) if self.entries is not None else 0
            self.seats[index] = Seat(mount.clone(self.session), depth, entries)
        for index in range(self.config.workers):
            self.start_worker(index)
        if self.fan_fd >= 0:
            self.start_worker(WATCHER)
        self._starting = len(self.workers)
        return self._supervise()

    def _supervise(self) -> int:
        """The control loop until the mount ends, then the cleanup; the exit code."""
        uvloop.run(self._control())
        if not self.abandoned:
            _detach(self.config.mountpoint, self.ours)
        os.close(self.session)
        for seat in self.seats.values():
            os.close(seat.devfd)
        state.remove(self.config.mountpoint)
        log.info("stopped")
        return 1 if self.failed else 0


def resume(h: restart.Handover, mountpoint: str, check: bool) -> int:
    """In the process `fastpass restart` executed: check the hand-over (`check`: only that, for
    the probe), or take the mount over and serve it until it ends."""
    config = h.record.config
    try:
        if (why := restart.refused(h, mountpoint)) is not None:
            raise ValueError(why)
        shared = SharedState(h.root_fd, config.max_inodes, config.cache_size if config.cache == "auto" else 0,
                             attach=(h.region, h.inodes))  # fmt: skip
        warnlog.attach(shared.warnings, shared.region, warnlog.SUPERVISOR)
        filters = load.load_all(config.filters)
    except (ValueError, load.SpecError) as e:
        print(f"fastpass: restart refused: {e}", file=sys.stderr)
        return 1
    if check:
        return 0
    pool = Pool(config, h.session, h.root_fd, shared, h.record, h.fan_fd, filters,
                mount.MountEntry(*h.ours) if h.ours is not None else None)  # fmt: skip
    pool.seats = {s.index: Seat(s.devfd, s.depth, s.entries, attach=(s.buffers, s.journal)) for s in h.seats}
    pool.restarts = h.restarts
    return pool.resume(h.workers)
