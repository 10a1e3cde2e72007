"""`fastpass stats`: what the workers counted, gathered by the supervisor, read over a unix socket.

The workers count into shared memory (`fastpass.shm.counters`); the
supervisor turns the blocks into one `Stats` record on request, and the
client prints it as a table, JSON, or a live view.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable

import msgspec

from fastpass import options, state
from fastpass.fs.handles import HandleTable
from fastpass.fs.shared import SharedState
from fastpass.kernel.abi import InitFlag, Opcode
from fastpass.kernel.init import Negotiated
from fastpass.kernel.mount import fuse_owner
from fastpass.shm import counters as C
from fastpass.shm import warnlog as W
from fastpass.shm.region import LOCK_TABLES

SCHEMA = 1
_TICK = os.sysconf("SC_CLK_TCK")
SHOWN_WARNINGS = 5  # the newest warnings `stats` shows, from every process of the mount


class OpStats(msgspec.Struct):
    name: str
    count: int
    errors: int
    mean_us: float
    p50_us: float
    p90_us: float
    p99_us: float


class WorkerStats(msgspec.Struct):
    index: int
    pid: int
    alive: bool
    requests: int
    rss_kib: int
    nodes_from_others: int  # nodeids this worker served that another worker created
    files_from_others: int  # fhs this worker served that another worker opened
    opens_passthrough: int  # opens whose reads and writes the kernel passes through
    opens_userspace: int  # opens of regular files served here
    io: str  # how it does its I/O: "uring" or "plain" ("" before it started serving)
    peak_in_flight: int  # the most requests it had in flight at once (the ring path; 0 on plain)
    ring_calls: int  # backing calls it made on its io_uring (0 on plain)
    transport: str = ""  # where its requests come from: "uring" (its entries, and /dev/fuse) or "dev"
    replayed: int = 0  # requests a killed predecessor at this index had read, answered for it
    fds: int = 0  # file descriptors it holds now (0 where it is gone)
    cpu_s: float = 0.0  # user + system CPU of the process at this index now (0 where it is gone)
    # Times the workers at this index found a shared-table lock held by another process, and the ms
    # they waited for them: contention between workers, which grows with their number.
    lock_waits: int = 0
    lock_wait_ms: float = 0.0


class CacheStats(msgspec.Struct):
    mode: str  # --cache: auto, off or strict
    coherence: str  # how outside changes reach the kernel: "fanotify", "revalidate 1 s", or "kernel timeouts"
    attr_timeout: float  # s the kernel trusts attributes
    entry_timeout: float  # s the kernel trusts names
    size: int  # entries of the shared attribute cache
    hits: int
    misses: int
    hit_rate: float  # hits / (hits + misses), 0 before any use
    evictions: int  # fills that replaced another inode's entry
    invalidations: int  # notifications the watcher sent the kernel
    watcher_pid: int  # 0 without a watcher


class LoggedWarning(msgspec.Struct):
    time: float  # time.time() when it was logged
    process: str  # "worker N", "watcher" or "supervisor"
    text: str


class Stats(msgspec.Struct):
    schema: int
    mountpoint: str
    backing: str
    supervisor_pid: int
    uptime_s: float
    workers: list[WorkerStats]
    restarts: int
    ops: list[OpStats]
    errors: dict[str, int]  # errno name -> replies with that error
    inodes: int  # live nodeids
    open_handles: int
    passthrough: bool  # the kernel agreed to FUSE_PASSTHROUGH (writeback cache is then off)
    negotiated: Negotiated | None  # None: libfuse negotiated it (the pyfuse3 engine)
    cache: CacheStats
    engine: str  # "native" or "pyfuse3"
    filters: list[str] = []  # the --filter specs, outermost first
    options: str = ""  # the -o list that mounts the same again, as the mount runs (cache timeouts resolved)
    # Where requests come from: "uring" when every live worker has its FUSE-over-io_uring entries
    # registered, else "dev" (/dev/fuse; the log says why); and with uring, the requests each queue
    # (one per CPU: the CPU of the caller) has carried.
    transport: str = "dev"
    requests_per_queue: list[int] = []
    backing_ids: int = 0  # passthrough backing ids registered now, idle ones kept for the next open included
    backing_registrations: int = 0  # since the mount
    fd_limit: int = 0  # RLIMIT_NOFILE of the server's processes, as raised at start
    inode_slots: int = 0  # slots the inode table has room for now, as it has grown (200 bytes each)
    pruned: int = 0  # nodeids fastpass asked the kernel to forget (FUSE_NOTIFY_PRUNE), since the mount
    warnings: list[LoggedWarning] = []  # the newest warnings and errors the server's processes logged, oldest first
    max_workers: int = 0  # the most workers `fastpass workers` may set on this mount
    # By shared table (`fastpass.shm.region.LOCK_TABLES`): the times a worker or the
    # watcher found one of its locks held by another process, and the ms it waited, since the mount.
    lock_waits: dict[str, int] = {}
    lock_wait_ms: dict[str, float] = {}


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def cpu_s(pid: int) -> float:
    """User + system CPU time of a process, in s; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cache(blocks: list[C.WorkerCounters], watcher: C.WorkerCounters, watcher_pid: int,
           record: state.MountState) -> CacheStats:  # fmt: skip
    config = record.config
    if config.cache != "auto":
        coherence = "kernel timeouts"
    else:
        coherence = f"revalidate {config.revalidate:g} s" if config.revalidate else "fanotify"
    hits = sum(b.misc[C.CACHE_HITS] for b in blocks)
    misses = sum(b.misc[C.CACHE_MISSES] for b in blocks)
    return CacheStats(
        config.cache, coherence, config.attr_timeout or 0.0, config.entry_timeout or 0.0,
        config.cache_size if config.cache == "auto" else 0, hits, misses, hits / (hits + misses) if hits else 0.0,
        sum(b.misc[C.CACHE_EVICTIONS] for b in [*blocks, watcher]), watcher.misc[C.INVALIDATIONS], watcher_pid,
    )  # fmt: skip


def _lock_waits(blocks: list[C.WorkerCounters]) -> tuple[dict[str, int], dict[str, float]]:
    """(waits, ms waited) by shared table, summed over the blocks; tables never waited for left out."""
    waits, ms = {}, {}
    for i, table in enumerate(LOCK_TABLES):
        at = C.LOCK_WAITS + 2 * i
        if n := sum(b.misc[at] for b in blocks):
            waits[table], ms[table] = n, sum(b.misc[at + 1] for b in blocks) / 1e6
    return waits, ms


def collect(blocks: list[C.WorkerCounters], pids: dict[int, int], restarts: int, inodes: int, handles: int,
            record: state.MountState, watcher: C.WorkerCounters, watcher_pid: int,
            requests_per_queue: list[int], inode_slots: int = 0,
            warnings: list[LoggedWarning] | None = None, serving: int | None = None) -> Stats:  # fmt: skip
    """Sum the workers' blocks; `pids` maps worker index -> its live pid.  Past index `serving`
    (the worker count now; default: every block), a block counts in the totals and shows as a
    worker only while its process lives (one retired by `fastpass workers` until it is gone)."""
    workers = []
    op_totals = [0] * (C.OPCODES * C.OP_STRIDE)
    errnos = [0] * C.ERRNOS
    for index, block in enumerate(blocks):
        ops = block.ops.tolist()
        for i, v in enumerate(ops):
            op_totals[i] += v
        for i, v in enumerate(block.errnos.tolist()):
            errnos[i] += v
        if serving is not None and index >= serving and index not in pids:
            continue
        pid = pids.get(index, block.misc[C.PID])
        workers.append(WorkerStats(
            index, pid, index in pids, sum(ops[op * C.OP_STRIDE] for op in range(C.OPCODES)), _rss_kib(pid),
            block.misc[C.FOREIGN_NODES], block.misc[C.FOREIGN_FILES], block.misc[C.OPENS_PASSTHROUGH],
            block.misc[C.OPENS_USERSPACE], C.IO_NAMES[block.misc[C.IO_PATH]], block.misc[C.PEAK_IN_FLIGHT],
            block.misc[C.RING_CALLS], C.TRANSPORT_NAMES[block.misc[C.TRANSPORT]], block.misc[C.REPLAYED],
            _fds(pid) if index in pids else 0, cpu_s(pid) if index in pids else 0.0,
            sum(block.misc[C.LOCK_WAITS : C.MISC : 2]), sum(block.misc[C.LOCK_WAITS + 1 : C.MISC : 2]) / 1e6,
        ))  # fmt: skip
    ops_out = []
    for op in range(C.OPCODES):
        base = op * C.OP_STRIDE
        count = op_totals[base]
        if not count:
            continue
        hist = op_totals[base + 3 : base + C.OP_STRIDE]
        ops_out.append(OpStats(
            Opcode(op).name if op in Opcode._value2member_map_ else f"op{op}", count, op_totals[base + 1],
            op_totals[base + 2] / count / 1e3, C.percentile(hist, 0.5) / 1e3, C.percentile(hist, 0.9) / 1e3,
            C.percentile(hist, 0.99) / 1e3,
        ))  # fmt: skip
    registered = sum(b.misc[C.BACKING_REGISTERED] for b in blocks)
    return Stats(
        SCHEMA, record.config.mountpoint, record.config.backing, record.pid, time.time() - record.started, workers,
        restarts, sorted(ops_out, key=lambda o: -o.count),
        {errno.errorcode.get(e, str(e)): n for e, n in enumerate(errnos) if n}, inodes, handles,
        record.negotiated is not None and record.negotiated.has(InitFlag.PASSTHROUGH), record.negotiated,
        _cache(blocks, watcher, watcher_pid, record), record.config.engine, list(record.config.filters),
        options.render(record.config),
        "uring" if requests_per_queue and all(w.transport == "uring" for w in workers if w.alive) else "dev",
        requests_per_queue, registered - sum(b.misc[C.BACKING_CLOSED] for b in blocks), registered,
        resource.getrlimit(resource.RLIMIT_NOFILE)[0], inode_slots,
        sum(b.misc[C.PRUNED] for b in blocks), warnings or [], record.config.max_workers or record.config.workers,
        *_lock_waits([*blocks, watcher]),
    )  # fmt: skip


def snapshot(shared: SharedState, workers: int, pids: dict[int, int], restarts: int,
             record: state.MountState, requests_per_queue: list[int], room: int = 0) -> bytes:  # fmt: skip
    """The JSON stats record of a mount from its shared counters; `pids`: counter block index -> live pid;
    `requests_per_queue`: [] without FUSE-over-io_uring; `room`: the worker indexes the mount may have
    used (`--max-workers`), whose counts stay in the totals after `fastpass workers` retired them."""
    blocks = [C.WorkerCounters(shared.counters, shared.region, i) for i in range(max(workers, room))]
    inodes = shared.inodes.live(shared.region)
    handles = HandleTable.live(shared.handles, shared.region)
    watcher = C.WorkerCounters(shared.counters, shared.region, C.WATCHER)
    names = {**{i: f"worker {i}" for i in range(len(blocks))}, C.WATCHER: "watcher", W.SUPERVISOR: "supervisor"}
    warnings = [LoggedWarning(*w) for w in W.recent(shared.warnings, shared.region, names, SHOWN_WARNINGS)]
    return msgspec.json.encode(collect(blocks, pids, restarts, inodes, handles, record, watcher,
                                       pids.get(C.WATCHER, 0), requests_per_queue,
                                       shared.inodes.slots(shared.region), warnings, workers))  # fmt: skip


Restart = Callable[[], tuple[bytes, Callable[[], None] | None]]  # the answer, and what to do once it is sent


@contextlib.asynccontextmanager
async def serving(mountpoint: str, answer: Callable[[], bytes], restart: Restart | None = None,
                  resize: Callable[[int], tuple[bytes, Callable[[], None] | None]] | None = None,
                  ) -> AsyncIterator[None]:  # fmt: skip
    """Answer `fastpass stats` (and, given `restart`, `fastpass restart`; given `resize`, `fastpass
    workers`: the line `workers N`) on the mount's socket (mode 0600) while inside.  What a command
    changes happens once its answer is sent and the connection closed (a worker forked before would
    hold the connection open)."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        then = None
        try:
            command = (await reader.readline()).strip()
            if command == b"stats":
                writer.write(answer())
            elif command == b"restart":
                body, then = restart() if restart is not None else (b"refused: this server cannot restart\n", None)
                writer.write(body)
            elif command.startswith(b"workers "):
                count = command[8:]
                body, then = ((b"refused: this server has one worker\n", None) if resize is None else
                              resize(int(count)) if count.isdigit() else (b"refused: not a count\n", None))  # fmt: skip
                writer.write(body)
            await writer.drain()
            writer.write_eof()  # the end of the answer even where a worker forked meanwhile holds the socket too
        finally:
            writer.close()
            if then is not None:
                await writer.wait_closed()
                then()

    path = state.socket_path(mountpoint)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.start_unix_server(reply, path=path)
    os.chmod(path, 0o600)
    try:
        yield
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class StatsUnavailable(Exception):
    """No supervisor answers for that mountpoint."""


def ask(mountpoint: str, command: bytes, timeout: float = 5.0) -> bytes:
    """The server's whole answer to one command line on the mount's socket."""
    path = state.socket_path(mountpoint)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(command + b"\n")
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
    except OSError as e:
        raise StatsUnavailable(_why_unanswered(mountpoint, e)) from None
    return b"".join(chunks)


def _why_unanswered(mountpoint: str, e: OSError) -> str:
    """Why no server answered at `mountpoint`'s socket: most often, a mount that another user's
    fastpass serves (its socket lives in that user's runtime directory, out of reach)."""
    owner = fuse_owner(mountpoint)
    if owner is not None and owner != os.geteuid():
        return f"{mountpoint} is served by the fastpass of uid {owner}: only that user can ask it"
    return f"no fastpass server answers for {mountpoint} ({e.strerror or e})"


def fetch(mountpoint: str, timeout: float = 5.0) -> Stats:
    return msgspec.json.decode(ask(mountpoint, b"stats", timeout), type=Stats)


class Refused(Exception):
    """The server refused the command; the message says why."""


def resize(mountpoint: str, n: int, timeout: float = 30.0) -> Stats:
    """Have the mount serve with `n` workers (`fastpass workers`); its stats once exactly workers
    0 to n-1 serve and none retired is left.  Raises Refused, StatsUnavailable, or TimeoutError."""
    answer = ask(mountpoint, f"workers {n}".encode(), timeout).decode().strip()
    if answer != "ok":
        raise Refused(answer.removeprefix("refused: ") or "no answer")
    deadline = time.monotonic() + timeout
    while True:
        now = fetch(mountpoint)
        if sorted(w.index for w in now.workers if w.alive) == list(range(n)) and len(now.workers) == n:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"{mountpoint}: the workers did not become {n} within {timeout:g} s (see the log)")
        time.sleep(0.02)


def uptime(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def render(stats: Stats) -> object:
    """A rich renderable of the record (tables of workers, operations and errors)."""
    from rich.box import SIMPLE_HEAD
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    n = stats.negotiated
    protocol = f"protocol 7.{n.minor}: {' '.join(n.flags)}" if n is not None else "protocol: libfuse's"
    head = Text(
        f"{stats.backing} on {stats.mountpoint}: {stats.engine} engine, supervisor {stats.supervisor_pid}, up "
        f"{uptime(stats.uptime_s)}, {_count(len(stats.workers), 'worker')}, {_count(stats.restarts, 'restart')}, "
        f"{_count(stats.inodes, 'inode')} "
        f"(table {stats.inode_slots:,} slots, {stats.pruned:,} pruned), {stats.open_handles} open handles\npassthrough "
        + (f"on ({stats.backing_ids:,} backing ids, {stats.backing_registrations:,} registered)" if stats.passthrough
           else "off")
        + ", writeback cache "
        f"{'on' if n is not None and 'WRITEBACK_CACHE' in n.flags else 'off'}; requests from "
        + (f"FUSE-over-io_uring, per queue (CPU): {' '.join(f'{q:,}' for q in stats.requests_per_queue)}"
           if stats.transport == "uring" else "/dev/fuse")
        + f"; {protocol}"
        + (f"\nfilters (outermost first): {' | '.join(stats.filters)}" if stats.filters else "")
    )
    # One line whatever the terminal's width, so that it can be pasted as it is
    options_line = Text(f"options: {stats.options}", no_wrap=True, overflow="ignore")
    fds = Text(f"file descriptors: up to {stats.fd_limit:,} per process; held by the workers: "
               + ", ".join(f"{w.fds:,}" for w in stats.workers)
               + "\nCPU s of the workers: " + ", ".join(f"{w.cpu_s:.1f}" for w in stats.workers)
               + "; waits for a lock another process held: "
               + ", ".join(f"{w.lock_waits:,} ({w.lock_wait_ms:.1f} ms)" for w in stats.workers)
               + "".join(f"\n  {table}: {n:,} waits, {stats.lock_wait_ms[table]:.1f} ms"
                         for table, n in stats.lock_waits.items()))  # fmt: skip
    # Pairs share a column ("a / b") so the table fits an 80-column terminal.
    workers = Table(title="workers", box=SIMPLE_HEAD)
    # ring calls / the most requests in flight at once; opens in kernel passthrough / served here;
    # nodeids / fhs this worker served that another worker made
    for col in ("worker", "pid", "requests", "RSS MiB", "io", "ring calls / peak", "opens pass / user",
                "others' nodes / fhs"):  # fmt: skip
        workers.add_column(col, justify="right")
    for w in stats.workers:
        workers.add_row(str(w.index) if w.alive else f"{w.index} (dead)", str(w.pid), f"{w.requests:,}",
                        f"{w.rss_kib / 1024:.1f}", w.io, f"{w.ring_calls:,} / {w.peak_in_flight:,}",
                        f"{w.opens_passthrough:,} / {w.opens_userspace:,}",
                        f"{w.nodes_from_others:,} / {w.files_from_others:,}")  # fmt: skip
    ops = Table(title="operations (latency in us)")
    for col in ("op", "count", "errors", "mean", "p50", "p90", "p99"):
        ops.add_column(col, justify="left" if col == "op" else "right")
    for o in stats.ops:
        ops.add_row(o.name, f"{o.count:,}", f"{o.errors:,}", f"{o.mean_us:.1f}", f"{o.p50_us:.0f}", f"{o.p90_us:.0f}",
                    f"{o.p99_us:.0f}")  # fmt: skip
    c = stats.cache
    cache = Text(
        f"cache {c.mode}: outside changes by {c.coherence}; kernel timeouts attr {c.attr_timeout:g} s, "
        f"entry {c.entry_timeout:g} s"
        + (f"; {c.size:,} entries, hit rate {c.hit_rate:.1%} ({c.hits:,} hits, {c.misses:,} misses), "
           f"{c.evictions:,} evictions, {c.invalidations:,} invalidations sent" if c.mode == "auto" else "")
    )  # fmt: skip
    parts: list = [head, options_line, fds, cache, workers, ops]
    if stats.warnings:
        lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(w.time))} {w.process}: {w.text}"
                 for w in stats.warnings]  # fmt: skip
        parts.append(Text("last warnings:\n" + "\n".join(lines)))
    if stats.errors:
        errors = Table(title="errors by errno")
        errors.add_column("errno")
        errors.add_column("replies", justify="right")
        for name, count in sorted(stats.errors.items(), key=lambda kv: -kv[1]):
            errors.add_row(name, f"{count:,}")
        parts.append(errors)
    return Group(*parts)
