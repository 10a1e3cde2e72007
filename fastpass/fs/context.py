"""What every operation sees: the request, the tables, and the caller's credentials."""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from fastpass import _linux
from fastpass.config import DEFAULT_REVALIDATE, MountConfig, split_time
from fastpass.fs import fstypes
from fastpass.fs.attrcache import AttrCache, atime_policy
from fastpass.fs.fds import FdBudget
from fastpass.fs.handles import DIR, FILE, DirHandle, HandleTable
from fastpass.fs.inode_index import InodeIndex
from fastpass.fs.inodes import InodeTable
from fastpass.fs.passthrough import Passthrough
from fastpass.fs.prune import Pruner
from fastpass.fs.shared import SharedState
from fastpass.fs.slots import Inode
from fastpass.kernel import encode
from fastpass.kernel.abi import ROOT_ID
from fastpass.kernel.init import MAX_WRITE
from fastpass.shm.counters import WorkerCounters

_clock = time.monotonic_ns
_NOW = (0, 0)  # a timeout (s, ns) that has passed as soon as it is given


class Request:
    """The in-header fields an operation may use."""

    __slots__ = ("gid", "nodeid", "opcode", "pid", "uid", "unique")

    def __init__(self, unique: int, opcode: int, nodeid: int, uid: int, gid: int, pid: int):
        self.unique = unique
        self.opcode = opcode
        self.nodeid = nodeid
        self.uid = uid
        self.gid = gid
        self.pid = pid


def proc_path(fd: int) -> str:
    """The magic link that reopens (or acts on) the inode behind an O_PATH fd."""
    return f"/proc/self/fd/{fd}"


class CallerUmask:
    """The caller's umask around one backing call that makes an inode (MKNOD, MKDIR, CREATE, TMPFILE).

    The kernel leaves the umask to us (FUSE_DONT_MASK) and sends it with the request.  Under
    it the backing does what it does for the caller's own call: applies it, or ignores it where
    the parent has a default ACL.  A worker is one thread, so the process-wide umask is this
    request's for the call's duration (the pyfuse3 engine makes its backing calls on one thread).
    """

    __slots__ = ("mask", "saved")

    def __init__(self, mask: int):
        self.mask = mask
        self.saved = 0

    def __enter__(self) -> None:
        self.saved = os.umask(self.mask)

    def __exit__(self, *exc: object) -> None:
        os.umask(self.saved)


class Credentials:
    """Runs a request as its caller (fsuid, fsgid, supplementary groups).

    fsuid/fsgid are per thread and drop the filesystem capabilities when
    they leave 0, so the backing's own permission checks, ownership of new
    files and setgid-directory rules all apply to the caller.  The caller's
    supplementary groups come from /proc/PID/status and are cached for a
    second per (pid, uid, gid): reading them costs more than the request.
    """

    GROUPS_TTL = 1.0

    def __init__(self) -> None:
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.groups = os.getgroups()
        self._cache: dict[tuple[int, int, int], tuple[float, list[int]]] = {}

    def _groups_of(self, pid: int, uid: int, gid: int) -> list[int]:
        key = (pid, uid, gid)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.GROUPS_TTL:
            return hit[1]
        groups = [gid]
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Groups:"):
                        groups = [int(g) for g in line.split()[1:]] or [gid]
                        break
        except OSError:
            pass  # the caller exited: its primary group alone
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = (now, groups)
        return groups

    def become(self, req: Request) -> bool:
        """Switch to the caller; False if the caller is us already (nothing to restore)."""
        if req.uid == self.uid and req.gid == self.gid:
            return False
        _linux.setgroups(self._groups_of(req.pid, req.uid, req.gid))
        _linux.setfsgid(req.gid)
        _linux.setfsuid(req.uid)
        return True

    def restore(self) -> None:
        _linux.setfsuid(self.uid)
        _linux.setfsgid(self.gid)
        _linux.setgroups(self.groups)


class Notify(Protocol):
    """Where a worker's notifications go (`fastpass.transport.dev.Notifier`)."""

    def inval_inode(self, nodeid: int, data: bool) -> None: ...

    def prune(self, nodeids: list[int]) -> None: ...


class Kernel(NamedTuple):
    """What the kernel agreed at INIT that shapes a worker's `Fs`, its device fd (passthrough's
    backing files are registered there) and where its notifications go."""

    devfd: int
    notify: Notify
    passthrough: bool = False
    writeback: bool = False
    prune: bool = False  # FUSE_NOTIFY_PRUNE (7.45)


class FilterNeeds(NamedTuple):
    """What the filters ask of the whole filesystem beside their wrapped routes
    (`fastpass.filters.stack.install` says)."""

    # (fs, request, nodeid, open flags): every read and write of this open must reach the filters
    # (FOPEN_DIRECT_IO)
    data: Callable[[Fs, Request, int, int], bool] | None = None
    flush: bool = False  # a filter hooks FLUSH: every close sends one (no FOPEN_NOFLUSH)
    lookup: bool = False  # a filter hooks LOOKUP: a missing name is never kept by the kernel (`absent`)


class Fs:
    """Per-worker filesystem state shared by all operations, built once: nothing outside sets it."""

    def __init__(self, config: MountConfig, root_fd: int, shared: SharedState, worker: int = 0,
                 kernel: Kernel | None = None, filters: FilterNeeds | None = None):  # fmt: skip
        """`kernel`: what INIT agreed, where a worker serves the device (None: libfuse's engine);
        `filters`: what the filters need (`fastpass.filters.stack.install`)."""
        self.config = config
        self.counters = WorkerCounters(shared.counters, shared.region, worker)
        self.fds = FdBudget(io_depth=config.io_depth)
        share = 0  # the most inodes one uid's lookups may bring into the table (0: no per-uid bound)
        if config.allow_other:
            share = config.max_inodes_per_user or shared.inodes.capacity // 2
            if share >= shared.inodes.capacity:  # the table's own bound comes first
                share = 0
        # FUSE_NOTIFY_PRUNE where the kernel has it: the index asks it to forget cold inodes.
        prune = Pruner(kernel.notify.prune, self.counters.misc) if kernel and kernel.prune else None
        self.index = InodeIndex(shared.inodes, shared.region, worker, self.counters.misc, share, prune)
        # What the kernel agreed at INIT, on this worker's device fd.
        self.passthrough = (Passthrough(kernel.devfd, self.index, shared.region, self.counters.misc)
                            if kernel and kernel.passthrough else None)  # fmt: skip
        self.inodes = InodeTable(self.index, root_fd, self.fds, self.passthrough)
        self.handles = HandleTable(shared.handles, shared.region, worker, self.counters.misc, self.fds,
                                   config.max_open_per_user if config.allow_other else 0)  # fmt: skip
        self.entry_valid = split_time(config.entry_timeout)
        self.attr_valid = split_time(config.attr_timeout)
        # READ replies land here; page-aligned so O_DIRECT backing reads work.
        self.read_buf = mmap.mmap(-1, MAX_WRITE)
        self.read_view = memoryview(self.read_buf)
        self.dirent_buf = ctypes.create_string_buffer(64 * 1024)
        self.stx_buf = ctypes.create_string_buffer(256)
        self.credentials = Credentials()
        self.cache = (AttrCache(shared.attrs, shared.region, self.counters.misc, config.revalidate, atime_policy(root_fd))
                      if config.cache == "auto" else None)  # fmt: skip
        # A filesystem mounted inside the backing raises no events on the watched one: where the
        # watcher is what keeps long timeouts true, its inodes ("away") get the revalidation period
        # as timeouts and stay out of the shared cache; elsewhere they are served alike.
        # Each is (cache, entry timeout, attr timeout) for an inode on the backing's device / another.
        self.home_dev = os.fstat(root_fd).st_dev
        self.home = (self.cache, self.entry_valid, self.attr_valid)
        self._magic: dict[int, int] = {}  # device number -> statfs magic of its filesystem
        watched = config.cache == "auto" and not config.revalidate
        self.watched = watched
        self.away = (None, split_time(min(config.entry_timeout, DEFAULT_REVALIDATE)),
                     split_time(min(config.attr_timeout, DEFAULT_REVALIDATE))) if watched else self.home  # fmt: skip
        filters = filters or FilterNeeds()
        self.filter_data = filters.data
        self.filter_flush = filters.flush
        self.filter_lookup = filters.lookup
        self._root_path: str | None = None
        # Under FUSE_WRITEBACK_CACHE, where `written_back` tells the kernel; None: no writeback cache.
        self.writeback = kernel.notify if kernel and kernel.writeback else None

    def file_fd(self, fh: int) -> int:
        """This worker's backing fd for an open file, reopened from the inode on first use here
        (or after it gave its copy back: `fastpass.fs.fds`)."""
        obj = self.handles.local(fh)
        if obj.__class__ is int:
            return obj  # type: ignore[return-value]
        nodeid, flags = self.handles.slot(fh, FILE)
        fd = self.fds.opening(self._reopen, nodeid, flags)
        self.handles.keep(fh, fd)
        return fd

    def _reopen(self, nodeid: int, flags: int) -> int:
        with _linux.fsuid(self.credentials.uid):  # the opener was checked; a copy is the server's
            return os.open(proc_path(self.inode_fd(nodeid)), flags | os.O_CLOEXEC)

    def dir_handle(self, fh: int) -> DirHandle:
        obj = self.handles.local(fh)
        if obj.__class__ is DirHandle:
            return obj  # type: ignore[return-value]
        nodeid, _ = self.handles.slot(fh, DIR)
        h = DirHandle(self.fds.opening(self.open_dir, nodeid))
        self.handles.keep(fh, h)
        return h

    def open_dir(self, nodeid: int) -> int:
        """A new open of a directory, as the server (the caller was checked at OPENDIR)."""
        with _linux.fsuid(self.credentials.uid):
            return os.open(proc_path(self.inode_fd(nodeid)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def path_of(self, nodeid: int) -> str:
        """The inode's path relative to the backing root ("." for the root), as the kernel's magic link
        names it: for filters to look at, never to serve by."""
        if self._root_path is None:
            self._root_path = os.readlink(proc_path(self.inode_fd(ROOT_ID))).rstrip("/") + "/"
        target = os.readlink(proc_path(self.inode_fd(nodeid))) + "/"
        return target.removeprefix(self._root_path).rstrip("/") or "."

    def sync(self) -> None:
        """Let go of what other workers freed (inodes forgotten, files released), and of the
        copies given back that no request in flight may use any more."""
        self.inodes.sync()
        self.handles.sync()
        self.fds.reap()

    def inode_fd(self, nodeid: int) -> int:
        inodes = self.inodes
        return inodes.fd(inodes.get(nodeid))

    # --- attributes: the backing's, through the shared cache ---------------------------
    def entry(self, inode: Inode, st: os.stat_result, t0: int, flags: int = 0) -> bytes:
        """fuse_entry_out for a backing stat begun at monotonic time `t0`, kept in the cache
        with `flags` (attrcache.NO_CAPS for a file this worker made)."""
        attr = encode.attr(st)
        cache, entry_valid, attr_valid = self.home if st.st_dev == self.home_dev else self.away
        if cache is not None:
            cache.put(inode.nodeid, t0, attr, flags)
        if self.writeback is not None and self.index.outdated(inode.nodeid) and stat.S_ISREG(st.st_mode):
            entry_valid = _NOW  # open, and changed outside: each walk asks until a lookup retires it
        return encode.entry_out(inode.nodeid, inode.generation, entry_valid, attr_valid, attr)

    def lookup_entry(self, parent_nodeid: int, name: bytes) -> bytes:
        inodes = self.inodes
        t0 = _clock()
        inode, st = inodes.lookup(inodes.get(parent_nodeid), name)
        return self.entry(inode, st, t0)

    def absent(self, parent_nodeid: int) -> bytes | None:
        """The LOOKUP reply for a name missing from a directory: a negative entry (nodeid 0), which
        the kernel keeps as a negative dentry and answers later probes from, or None for ENOENT.

        It is kept as long as a name found there would be (the parent's entry timeout, by its
        device), so it is exactly as coherent: where the watcher sees the directory, its create
        or move-in event drops the dentry (FUSE_NOTIFY_INVAL_ENTRY finds negative ones too);
        elsewhere the name shows within the timeout; with a timeout of 0 nothing is kept.  Not
        where a filter hooks LOOKUP: what it answers may change with the caller or its state.
        """
        if self.filter_lookup:
            return None
        dev = self.inodes.get(parent_nodeid).key[0]
        entry_valid = (self.home if dev == self.home_dev else self.away)[1]
        return encode.negative_entry(entry_valid) if entry_valid != (0, 0) else None

    def attr(self, nodeid: int, st: os.stat_result, t0: int) -> bytes:
        """fuse_attr_out for a backing stat begun at `t0`, kept in the cache."""
        attr = encode.attr(st)
        cache, _, attr_valid = self.home if st.st_dev == self.home_dev else self.away
        if cache is not None:
            cache.put(nodeid, t0, attr)
        return encode.attr_out(attr_valid, attr)

    def kept(self, inode: Inode) -> bool:
        """Whether the kernel may keep the inode's pages (a file's data, a directory's listing)
        across opens: only where the watcher drops them when something else changes them."""
        return self.watched and inode.key[0] == self.home_dev

    def magic(self, inode: Inode) -> int:
        """The statfs magic of the filesystem the inode is on (fastpass.fs.fstypes), cached per
        device number."""
        dev = inode.key[0]
        known = self._magic.get(dev)
        if known is None:
            known = self._magic[dev] = fstypes.magic(self.inodes.fd(inode))
        return known

    def unsized(self, inode: Inode) -> bool:
        """Whether the inode is on a filesystem whose sizes are not its files' lengths (procfs, sysfs...)."""
        return self.magic(inode) in fstypes.UNSIZED

    def attr_valid_for(self, dev: int) -> tuple[int, int]:
        """How long the kernel may trust the attributes of an inode on device `dev`."""
        return (self.home if dev == self.home_dev else self.away)[2]

    def cached_attr(self, nodeid: int) -> bytes | None:
        """fuse_attr_out from the shared cache, or None: ask the backing.  An inode with a
        passthrough open is never answered from it (the kernel changes such files itself)."""
        cache = self.cache
        if cache is None or (self.passthrough is not None and self.index.in_passthrough(nodeid)):
            return None
        attr = cache.get(nodeid)
        return None if attr is None else encode.attr_out(self.attr_valid, attr)

    def refresh(self, nodeid: int, fd: int) -> None:
        """After a change made through `fd`: the cache takes the backing's attributes from now."""
        if self.cache is not None:
            t0 = _clock()
            st = os.fstat(fd)
            cache = (self.home if st.st_dev == self.home_dev else self.away)[0]
            if cache is not None:
                cache.put(nodeid, t0, encode.attr(st))

    def written_back(self, nodeid: int) -> None:
        """After a write of the kernel's dirty pages: it drops its attributes of the file, so that
        the next stat asks again (st_blocks follows the backing; size and times stay the
        kernel's).  Nothing else tells it: it keeps what the last reply said for the attribute
        timeout.  Attributes only, so the kernel waits for no writeback (no deadlock here)."""
        try:
            self.writeback.inval_inode(nodeid, False)  # type: ignore[union-attr]
        except FileNotFoundError:
            pass  # the kernel holds the inode no longer

    def changed(self, *nodeids: int) -> None:
        """These inodes changed as a side effect (a parent's mtime, a victim's link count)."""
        if self.cache is not None:
            for nodeid in nodeids:
                if nodeid:
                    self.cache.changed(nodeid)

    def known(self, dir_fd: int, name: bytes) -> int:
        """The nodeid the kernel may hold for `name` (before it is removed or replaced), or 0."""
        if self.cache is None:
            return 0
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return 0
        return self.index.nodeid_of((st.st_dev, st.st_ino))
