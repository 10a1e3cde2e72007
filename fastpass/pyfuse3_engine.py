"""The pyfuse3 engine: the same filesystem served through libfuse, in one process.

Size: over 500 lines and `Operations` over 25 methods, one method for each operation
pyfuse3 calls (its interface), each a few lines turning the call into a request.

Why it exists: it is the portable fallback (whatever kernel libfuse
supports, no native protocol code involved) and the reference the native
engine is tested against.  It serves through the same dispatch routes as a
worker (`fastpass.fs.table.build`), so the same operations, inode table,
attribute cache and credentials handling apply: each pyfuse3 call becomes the
request the kernel would have sent, its handler runs, and the reply it
encoded is decoded into pyfuse3's objects.  One place holds each operation's
semantics.

pyfuse3 runs on asyncio with uvloop.  Backing calls block, so they run on one
executor thread and the loop stays free to take requests.  One thread and not
a pool: an `Fs` (its buffers, fd caches and credentials) belongs to one
thread.  Parallelism is the native engine's job, with its workers.

What libfuse through pyfuse3 cannot carry, and the native engine can: kernel
passthrough (no backing ids), fallocate, lseek, copy_file_range, O_TMPFILE,
statx, setxattr's XATTR_CREATE/XATTR_REPLACE flags, and "." and ".." in
listings.  pyfuse3 also uses an entry's st_ino as the kernel's nodeid, so a
stat through this engine shows fastpass's nodeid as the inode number.
Operations without a request context in pyfuse3 (read, write, flush,
release, fsync) reach filters with uid, gid and pid 0; readdir runs as the
caller that opened the directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import mmap
import os
import signal
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pyfuse3
import pyfuse3.asyncio
import uvloop

from fastpass import state, stats, systemd
from fastpass.config import IDLE_SYNC, MountConfig
from fastpass.filters import results, stack
from fastpass.filters.api import Attr, Dirent, Entry, Opened
from fastpass.fs.context import Fs, Request
from fastpass.fs.dirs import DOTS
from fastpass.fs.handles import DIR, FILE
from fastpass.fs.shared import SharedState
from fastpass.fs.table import Route, Unexpected, build, run_route
from fastpass.fs.watcher import Watcher
from fastpass.kernel import abi
from fastpass.kernel.abi import ROOT_ID, Fattr, FopenFlag
from fastpass.kernel.abi import Opcode as O
from fastpass.kernel.init import MAX_WRITE
from fastpass.kernel.mount import MountEntry, escape, mount_entry
from fastpass.shm.counters import PID, STARTED_NS, WATCHER, WorkerCounters

log = logging.getLogger("fastpass.pyfuse3")

_NS = 1_000_000_000
_XATTR_MAX = 65536  # the largest value Linux allows
_READDIR_BUDGET = 32 * 1024  # bytes of direntplus records asked of the handler per pass
_XATTR_ARGS = types.SimpleNamespace(size=_XATTR_MAX)  # what the xattr decoders read of a request: its size


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def _attributes(shown: int, generation: int, entry_s: float, attr_s: float, a: Attr) -> pyfuse3.EntryAttributes:
    """pyfuse3's form of a decoded fuse_attr, under the inode number the kernel is to see."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = shown
    e.generation = generation
    e.entry_timeout = entry_s
    e.attr_timeout = attr_s
    e.st_mode, e.st_nlink, e.st_uid, e.st_gid = a.mode, a.nlink, a.uid, a.gid
    e.st_rdev = os.makedev(*abi.new_decode_dev(a.rdev))
    e.st_size, e.st_blocks, e.st_blksize = a.size, a.blocks, a.blksize
    e.st_atime_ns = _signed(a.atime) * _NS + a.atimensec
    e.st_mtime_ns = _signed(a.mtime) * _NS + a.mtimensec
    e.st_ctime_ns = _signed(a.ctime) * _NS + a.ctimensec
    return e


class Numbers:
    """The inode numbers the kernel sees, which pyfuse3 also makes its nodeids.

    pyfuse3 uses an entry's st_ino as the kernel's nodeid.  Handing it fastpass's
    nodeid would make every stat and listing show numbers that are not the
    backing's, so the engine shows the backing's st_ino and translates it back,
    keeping the kernel's lookup count per number so a translation goes when the
    kernel forgets it.  The backing root is always number 1 (FUSE's root).  A
    number the kernel already holds for another inode (a filesystem mounted
    inside the backing tree numbers its own inodes from 1 again; a number reused
    while the kernel still holds the old inode), and number 1 itself, are shown
    as a spare number instead: one nodeid per inode, whatever the numbers.
    Changed on the loop thread only; the watcher thread reads `shown_as` (single
    dict reads, atomic under the GIL).
    """

    SPARE = 1 << 62  # above any inode number a local filesystem hands out

    def __init__(self) -> None:
        self._nodeid: dict[int, int] = {pyfuse3.ROOT_INODE: ROOT_ID}
        self._shown: dict[int, int] = {ROOT_ID: pyfuse3.ROOT_INODE}
        self._count: dict[int, int] = {}
        self._spare = self.SPARE

    def show(self, nodeid: int, ino: int) -> int:
        """The number for a nodeid the kernel now holds one more lookup of."""
        shown = self._shown.get(nodeid)
        if shown is None:
            shown = ino
            if self._nodeid.get(shown, nodeid) != nodeid:  # held for another inode (1: the root)
                self._spare += 1
                shown = self._spare
            self._nodeid[shown] = nodeid
            self._shown[nodeid] = shown
        elif nodeid == ROOT_ID:
            return shown
        self._count[shown] = self._count.get(shown, 0) + 1
        return shown

    def shown_as(self, nodeid: int) -> int:
        """The number the kernel holds `nodeid` under, or 0."""
        return self._shown.get(nodeid, 0)

    def nodeid(self, shown: int) -> int:
        nodeid = self._nodeid.get(shown)
        if nodeid is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return nodeid

    def forget(self, shown: int, n: int) -> tuple[int, int] | None:
        """(nodeid, n) to forget in fastpass's table, or None for a number not held."""
        nodeid = self._nodeid.get(shown)
        if nodeid is None or nodeid == ROOT_ID:
            return None
        left = self._count.get(shown, 0) - n
        if left > 0:
            self._count[shown] = left
        else:
            self._count.pop(shown, None)
            del self._nodeid[shown]
            if self._shown.get(nodeid) == shown:
                del self._shown[nodeid]
        return nodeid, n


def entry_attributes(e: Entry, numbers: Numbers) -> pyfuse3.EntryAttributes:
    """An entry the kernel is to hold (one lookup), under the number it will know it by; for a
    negative entry (nodeid 0: `Fs.absent`), st_ino 0 and its timeout, which libfuse sends as such."""
    if not e.nodeid:
        negative = pyfuse3.EntryAttributes()
        negative.entry_timeout = e.entry_valid + e.entry_valid_nsec / _NS
        return negative
    return _attributes(numbers.show(e.nodeid, e.attr.ino), e.nodeid >> 32, e.entry_valid + e.entry_valid_nsec / _NS,
                       e.attr_valid + e.attr_valid_nsec / _NS, e.attr)  # fmt: skip


def attr_attributes(raw: bytes) -> pyfuse3.EntryAttributes:
    """A fuse_attr_out.  Its st_ino is only shown, never taken as a nodeid, so it is the
    backing's number even for the root (nodeid 1)."""
    r = _decode(O.GETATTR, raw)
    return _attributes(r.attr.ino, 0, 0.0, r.attr_valid + r.attr_valid_nsec / _NS, r.attr)


def file_info(o: Opened) -> pyfuse3.FileInfo:
    """A fuse_open_out (without its backing id: pyfuse3 has no passthrough)."""
    return pyfuse3.FileInfo(fh=o.fh, direct_io=bool(o.open_flags & FopenFlag.DIRECT_IO),
                            keep_cache=bool(o.open_flags & FopenFlag.KEEP_CACHE),
                            nonseekable=bool(o.open_flags & FopenFlag.NONSEEKABLE))  # fmt: skip


def _decode(opcode: int, raw: object) -> Any:
    """A reply body as the typed result the filters see (`fastpass.filters.results`, one decoder per layout)."""
    return results.codec(opcode).decode(raw, _XATTR_ARGS)


def _bare(d: Dirent) -> pyfuse3.EntryAttributes:
    """A name without attributes: "." or "..", which the kernel never links, or a name the caller
    may not look up (a directory it can read but not search) or gone since getdents.

    pyfuse3 sends st_ino as both the entry's nodeid and its d_ino, and a nonzero nodeid makes
    the kernel link the name with these (empty) attributes, which a later stat would be
    answered from without asking anyone.  So such a name goes out with nodeid 0, the kernel
    links nothing, and readdir(3) skips it (d_ino 0 marks a deleted entry): this engine lists
    only the names the caller may look up.
    """
    e = pyfuse3.EntryAttributes()
    e.st_ino = d.ino if d.name in DOTS else 0
    e.st_mode = d.type << 12  # DT_* to S_IF*: what libfuse takes the entry's d_type from
    return e


class Operations(pyfuse3.Operations):
    """pyfuse3's callbacks, each turned into the request a worker would serve."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: Fs, routes: list[Route | None], allow_other: bool, filters: list[object]):
        super().__init__()
        # FUSE_POSIX_ACL where the kernel checks permissions (default_permissions), as the native
        # engine asks.  libfuse through pyfuse3 cannot ask for FUSE_DONT_MASK: the kernel applies
        # the umask before the request, so under a parent's default ACL a new inode may lack
        # bits the bind mount would give it (never has more).
        self.enable_acl = fs.config.default_permissions
        self.fs = fs
        self.routes = routes
        self.creds = fs.credentials if allow_other else None
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastpass-backing")
        self.numbers = Numbers()
        self.filters = filters
        self.flush_failed: set[str] = set()
        self.aligned = mmap.mmap(-1, MAX_WRITE)
        self.unexpected = Unexpected()
        # Who opened each directory fh: pyfuse3's readdir has no context, and its entries must be
        # resolved as that caller (a directory they may read but not search shows names only).
        self.dir_callers: dict[int, tuple[int, int, int]] = {}

    # --- the edge: one request in, one reply or one errno out ------------------------
    async def _call(self, opcode: int, shown: int, ctx: pyfuse3.RequestContext | None, *args: object) -> object:
        """Serve one request on the inode the kernel knows as `shown` (0: none, or by fh)."""
        nodeid = self.numbers.nodeid(shown) if shown else 0
        req = Request(0, opcode, nodeid, ctx.uid, ctx.gid, ctx.pid) if ctx else Request(0, opcode, nodeid, 0, 0, 0)
        return await self._serve(opcode, req, args)

    async def _by_fh(self, opcode: int, fh: int, kind: int, *args: object,
                     caller: tuple[int, int, int] = (0, 0, 0)) -> object:  # fmt: skip
        """Serve a request on an open file or directory: its inode comes from the handle table."""
        try:
            nodeid = self.fs.handles.slot(fh, kind)[0]
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EBADF) from None
        return await self._serve(opcode, Request(0, opcode, nodeid, *caller), args)

    async def flush_filters(self) -> None:
        """The filters' buffers (audit lines) out, on the backing thread where the filters run."""
        await asyncio.get_running_loop().run_in_executor(self.pool, stack.flush, self.filters, self.flush_failed)

    async def _serve(self, opcode: int, req: Request, args: tuple) -> object:
        error, body = await asyncio.get_running_loop().run_in_executor(self.pool, self._run, opcode, req, args)
        if error:
            raise pyfuse3.FUSEError(-error)
        return body

    def _run(self, opcode: int, req: Request, args: tuple) -> tuple[int, object]:
        """On the backing thread: the handler through `run_route`, (0 or -errno, the reply body)."""
        route = self.routes[opcode]
        fs = self.fs
        if route is None or route.handler is None:
            return -errno.ENOSYS, None
        if opcode == O.WRITE:  # the payload goes to a page-aligned buffer, as an O_DIRECT backing write needs
            data = args[-1]
            aligned = memoryview(self.aligned)[: len(data)]  # type: ignore[arg-type]
            aligned[:] = data  # type: ignore[index]
            args = (*args[:-1], aligned)
        fs.sync()  # copies given back close now: no other request is being served
        start = time.perf_counter_ns()
        error, body = run_route(fs, route, req, route.handler, args, self.creds, self.unexpected)
        fs.counters.record(opcode, time.perf_counter_ns() - start, error)
        if body.__class__ is memoryview:
            body = bytes(body)  # the read buffer is reused by the next READ
        return error, body

    def _entry(self, raw: object) -> pyfuse3.EntryAttributes:
        return entry_attributes(_decode(O.LOOKUP, raw), self.numbers)

    # --- names ---------------------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._call(O.LOOKUP, parent_inode, ctx, name))  # type: ignore[arg-type]

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        numbers = self.numbers
        ours = [f for f in (numbers.forget(shown, n) for shown, n in inode_list) if f is not None]
        if ours:
            await self._call(O.BATCH_FORGET, 0, None, ours)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._call(O.MKDIR, parent_inode, ctx, mode, ctx.umask, name))  # type: ignore[arg-type]

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # fmt: skip
        dev = abi.new_encode_dev(os.major(rdev), os.minor(rdev))
        return self._entry(await self._call(O.MKNOD, parent_inode, ctx, mode, dev, ctx.umask, name))  # type: ignore[arg-type]

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # fmt: skip
        return self._entry(await self._call(O.SYMLINK, parent_inode, ctx, name, target))  # type: ignore[arg-type]

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # fmt: skip
        return self._entry(await self._call(O.LINK, new_parent_inode, ctx, self.numbers.nodeid(inode), new_name))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._call(O.READLINK, inode, ctx)  # type: ignore[return-value]

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(O.UNLINK, parent_inode, ctx, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(O.RMDIR, parent_inode, ctx, name)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int,
                     ctx: pyfuse3.RequestContext) -> None:  # fmt: skip
        await self._call(O.RENAME2, parent_inode_old, ctx, self.numbers.nodeid(parent_inode_new), flags, name_old,
                         name_new)  # fmt: skip

    # --- attributes ------------------------------------------------------------------------
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return attr_attributes(await self._call(O.GETATTR, inode, ctx, 0, 0))  # type: ignore[arg-type]

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # fmt: skip
        valid = 0
        for flag, wanted in ((Fattr.MODE, fields.update_mode), (Fattr.UID, fields.update_uid),
                             (Fattr.GID, fields.update_gid), (Fattr.SIZE, fields.update_size),
                             (Fattr.ATIME, fields.update_atime), (Fattr.MTIME, fields.update_mtime),
                             (Fattr.FH, fh is not None)):  # fmt: skip
            if wanted:
                valid |= flag
        a, an = divmod(attr.st_atime_ns, _NS)
        m, mn = divmod(attr.st_mtime_ns, _NS)
        raw = await self._call(O.SETATTR, inode, ctx, valid, fh or 0, attr.st_size, 0, a, m, 0, an, mn, 0,
                               attr.st_mode, attr.st_uid, attr.st_gid)  # fmt: skip
        return attr_attributes(raw)  # type: ignore[arg-type]

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        try:
            await self._call(O.ACCESS, inode, ctx, mode)
        except pyfuse3.FUSEError as e:
            if e.errno == errno.EACCES:
                return False
            raise
        return True

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        raw = await self._call(O.STATFS, pyfuse3.ROOT_INODE, ctx)
        v = _decode(O.STATFS, raw)
        s = pyfuse3.StatvfsData()
        s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_favail = v.blocks, v.bfree, v.bavail, v.files, \
            v.ffree, v.ffree  # fmt: skip
        s.f_bsize, s.f_frsize, s.f_namemax = v.bsize, v.frsize, v.namelen
        return s

    # --- extended attributes ------------------------------------------------------------
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._call(O.GETXATTR, inode, ctx, _XATTR_MAX, name)  # type: ignore[return-value]

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        raw = await self._call(O.LISTXATTR, inode, ctx, _XATTR_MAX)
        return _decode(O.LISTXATTR, raw)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(O.SETXATTR, inode, ctx, len(value), 0, name, value)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(O.REMOVEXATTR, inode, ctx, name)

    # --- files ---------------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return file_info(_decode(O.OPEN, await self._call(O.OPEN, inode, ctx, flags, 0)))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:  # fmt: skip
        raw = await self._call(O.CREATE, parent_inode, ctx, flags, mode, ctx.umask, 0, name)
        c = _decode(O.CREATE, raw)
        return file_info(c.opened), entry_attributes(c.entry, self.numbers)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._by_fh(O.READ, fh, FILE, fh, off, size, 0, 0, 0)  # type: ignore[return-value]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raw = await self._by_fh(O.WRITE, fh, FILE, fh, off, len(buf), 0, 0, 0, buf)
        return abi.WRITE_OUT.unpack(raw)[0]  # type: ignore[arg-type]

    async def flush(self, fh: int) -> None:
        await self._by_fh(O.FLUSH, fh, FILE, fh, 0)

    async def release(self, fh: int) -> None:
        await self._by_fh(O.RELEASE, fh, FILE, fh, 0, 0, 0)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._by_fh(O.FSYNC, fh, FILE, fh, abi.FSYNC_FDATASYNC if datasync else 0)

    # --- directories -------------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fh = _decode(O.OPENDIR, await self._call(O.OPENDIR, inode, ctx, os.O_RDONLY, 0)).fh
        self.dir_callers[fh] = (ctx.uid, ctx.gid, ctx.pid)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """READDIRPLUS in passes; an entry pyfuse3 has no room for gives its lookup back."""
        offset = start_id
        while True:
            raw = await self._by_fh(O.READDIRPLUS, fh, DIR, fh, offset, _READDIR_BUDGET, 0, 0, 0,
                                    caller=self.dir_callers.get(fh, (0, 0, 0)))  # fmt: skip
            dirents = _decode(O.READDIRPLUS, raw)
            if not dirents:
                return
            for i, d in enumerate(dirents):
                shown = entry_attributes(d.entry, self.numbers) if d.entry is not None else _bare(d)
                if not pyfuse3.readdir_reply(token, d.name, shown, d.off):
                    if d.entry is not None:
                        self.numbers.forget(shown.st_ino, 1)  # shown just now, never sent
                    unsent = [(x.entry.nodeid, 1) for x in dirents[i:] if x.entry is not None]
                    if unsent:  # the handler counted their lookups; the kernel will never forget them
                        await self._call(O.BATCH_FORGET, 0, None, unsent)
                    return
                offset = d.off

    async def releasedir(self, fh: int) -> None:
        self.dir_callers.pop(fh, None)
        await self._by_fh(O.RELEASEDIR, fh, DIR, fh, 0, 0, 0)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self._by_fh(O.FSYNCDIR, fh, DIR, fh, abi.FSYNC_FDATASYNC if datasync else 0)


class Notifier:
    """The watcher's way to the kernel through libfuse's session (from a thread other than the
    loop's), with fastpass's nodeids turned into the numbers the kernel holds."""

    def __init__(self, numbers: Numbers):
        self.numbers = numbers

    def inval_inode(self, nodeid: int, data: bool) -> None:
        shown = self.numbers.shown_as(nodeid)
        if shown:
            pyfuse3.invalidate_inode(shown, attr_only=not data)

    def inval_entry(self, parent: int, name: bytes, child: int) -> None:
        shown = self.numbers.shown_as(parent)
        if shown:
            pyfuse3.invalidate_entry(shown, name, deleted=self.numbers.shown_as(child) if child else 0)

    def forget_names(self) -> None:
        """libfuse 3 has no call for FUSE_NOTIFY_INC_EPOCH: names follow their timeouts."""


def _options(config: MountConfig) -> set[str]:
    return {f"fsname={escape(config.source())}", f"subtype={config.subtype}", *config.mount_options()}


def run(config: MountConfig, ready: Callable[[str | None], None], mounted: Callable[[MountEntry | None], None],
        fan_fd: int, root_fd: int, shared: SharedState, filters: list[object]) -> int:  # fmt: skip
    """Serve `config` through pyfuse3 until unmounted; `ready` and `mounted` as for the native engine."""
    os.umask(0)  # creating calls run under the caller's umask (fastpass.fs.context.CallerUmask)
    routes, needs = stack.install(build(), filters)
    fs = Fs(config, root_fd, shared, 0, filters=needs)
    fs.counters.misc[PID] = os.getpid()
    fs.counters.misc[STARTED_NS] = time.time_ns()
    ops = Operations(fs, routes, config.allow_other, filters)
    pyfuse3.asyncio.enable()
    try:
        pyfuse3.init(ops, config.mountpoint, _options(config))
    except RuntimeError as e:
        ready(f"pyfuse3 could not mount {config.mountpoint}: {e}")
        return 1
    mounted(mount_entry(config.mountpoint))
    fs.fds.settle()
    record = state.MountState(os.getpid(), config, None, time.time())
    state.write(record)
    if fan_fd >= 0:
        me = os.getpid()
        counters = WorkerCounters(shared.counters, shared.region, WATCHER).misc
        watcher = Watcher(fan_fd, Notifier(ops.numbers), config.backing, shared.inodes, shared.region, fs.cache,
                          lambda pid: pid == me, counters)  # fmt: skip
        root = config.mountpoint if config.default_permissions else None
        threading.Thread(target=watcher.run, args=(root,), name="fastpass-watch", daemon=True).start()
    log.info("mounted %s on %s (pyfuse3 %s)", config.backing, config.mountpoint, pyfuse3.__version__)

    async def main() -> None:
        pids = {0: os.getpid(), **({WATCHER: os.getpid()} if fan_fd >= 0 else {})}  # the watcher is a thread here
        answer = lambda: stats.snapshot(shared, 1, pids, 0, record, [])
        async def flush_when_idle() -> None:  # as a worker does on its idle timer
            while True:
                await asyncio.sleep(IDLE_SYNC)
                await ops.flush_filters()

        stopping: list[str] = []

        def stop(why: str) -> None:  # as the native engine's supervisor stops; once
            if not stopping:
                stopping.append(why)
                systemd.notify("STOPPING=1")
                log.info("%s: unmounting %s", why, config.mountpoint)
                pyfuse3.terminate()

        loop = asyncio.get_running_loop()
        for signo in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signo, stop, signo.name)
        async with stats.serving(config.mountpoint, answer):
            ready(None)
            flusher = asyncio.get_running_loop().create_task(flush_when_idle()) if filters else None
            try:
                await pyfuse3.main(min_tasks=2, max_tasks=32)
            finally:
                if flusher is not None:
                    flusher.cancel()
                await ops.flush_filters()

    try:
        uvloop.run(main())
    finally:
        pyfuse3.close(unmount=True)
        state.remove(config.mountpoint)
        log.info("stopped")
    return 0
