"""Changes made behind fastpass's back, pushed to the kernel: the fanotify watcher process.

Why fanotify and not inotify:

* one filesystem mark covers the whole backing tree, directories made later
  included; inotify needs a watch per directory, added after each mkdir
  (racing the first changes inside it) and capped by max_user_watches;
* each event carries the pid of the process that made the change, so the
  changes the workers made themselves are not echoed back as invalidations
  (the kernel already knows about those from the replies);
* events name inodes by file handle, the identity the inode table keeps.

It needs CAP_SYS_ADMIN and a local filesystem; elsewhere (not root, network
filesystems, whose other clients' changes raise no events here) the cache
falls back to revalidation by time (`--revalidate`).

For each change from another process, the watcher drops the inode's
shared-cache entry first and then tells the kernel: FUSE_NOTIFY_INVAL_INODE
for changed attributes (with the page cache for changed data, and for a
directory whose names changed: its cached listing lives there),
FUSE_NOTIFY_INVAL_ENTRY for a name created, removed or renamed (so a name
the kernel would trust for its entry timeout is looked up again), and
FUSE_NOTIFY_DELETE where the removed inode is one the kernel knows.  Events
are read in batches after a short pause, so a burst of writes to one file
costs one notification.

A change by the kernel's own passthrough I/O carries the writing
application's pid and is indistinguishable from an outside change; it costs
one attribute invalidation.

Under the writeback cache (`--writeback-cache`) the kernel keeps a regular
file's size, mtime and ctime for as long as it holds the inode, whatever a
GETATTR or an invalidation says (fs/fuse/inode.c, fuse_get_cache_mask: Linux
6.18 has no exception for clean files).  Only a new inode takes the backing's
values, so for each outside change of a non-directory the watcher also
invalidates the name the event came with (`evict`): an inode that nothing
holds open, mapped or by another cached name is then dropped by the kernel,
and the next lookup makes it afresh.  The kernel may still hold an inode
nothing uses (a last RELEASE not yet answered), so it is also marked
(`SlotReader.outdate`): its next lookup once no open holds it gives the name
a new nodeid (fastpass.fs.inode_index).  While something holds it, its size and
times stay the kernel's; its data still follows (the pages are dropped).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import struct
import time
from collections.abc import Callable
from typing import Protocol

from fastpass import _linux
from fastpass.fs.attrcache import AttrCache
from fastpass.fs.slots import InodeSpace, SlotReader
from fastpass.shm.counters import INVALIDATIONS
from fastpass.shm.region import Region

log = logging.getLogger("fastpass.watcher")

_INIT = (_linux.FAN_CLOEXEC | _linux.FAN_REPORT_FID | _linux.FAN_REPORT_DIR_FID | _linux.FAN_REPORT_NAME
         | _linux.FAN_REPORT_TARGET_FID)  # fmt: skip
_DATA = _linux.FAN_MODIFY
_ENTRY = _linux.FAN_CREATE | _linux.FAN_DELETE | _linux.FAN_MOVED_FROM | _linux.FAN_MOVED_TO
_MASK = _DATA | _linux.FAN_ATTRIB | _ENTRY | _linux.FAN_ONDIR
_META = struct.Struct("<IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO = struct.Struct("<BBH")  # info_type, pad, len
_HANDLE_AT = _INFO.size + 8  # after the record header and the fsid
_HANDLE_HEAD = struct.Struct("<Ii")  # handle_bytes, handle_type
# s: under a stream of events, the watcher waits this long after one before it reads, so that a
# burst merges into one read and one notification per inode.  Reading at once every time (tried)
# cut the latency of a lone change from 4.7 to 1.2 ms, but under load the watcher then read a few
# events at a time, the server's own included, and cost 10 us more CPU per metadata operation (a
# metadata load of 2 clients on 2 workers).  So it pauses only under a stream of events: STREAM
# bytes or more read within WINDOW s (an event is about 100 bytes; a metadata load brings dozens a
# window).  A lone change, or the few events of a program's own write through the mount just
# before it, is read at once.
BATCH_PAUSE = 0.005
WINDOW = 0.01
STREAM = 2048
# Filesystems whose changes can come from elsewhere without an event here.
REMOTE = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "fuse", "fuseblk",
                    "gfs2", "ocfs2", "lustre", "virtiofs"})  # fmt: skip


def open_watch(backing: str, fstype: str) -> int | str:
    """A fanotify fd marking the backing's filesystem, or why there cannot be one."""
    if fstype.split(".")[0] in REMOTE:
        return f"{fstype} reports no changes made by other clients"
    if os.geteuid() != 0:
        return "fanotify needs root"
    try:
        fd = _linux.fanotify_init(_INIT, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return f"fanotify_init: {e.strerror}"
    try:
        _linux.fanotify_mark(fd, _linux.FAN_MARK_ADD | _linux.FAN_MARK_FILESYSTEM, _MASK, backing)
    except OSError as e:
        os.close(fd)
        return f"fanotify_mark on {fstype}: {e.strerror}"
    return fd


class Changes:
    """What one batch of events asks the kernel to forget, deduplicated."""

    def __init__(self) -> None:
        self.inodes: dict[int, bool] = {}  # nodeid -> data changed too
        self.entries: dict[tuple[int, bytes], int] = {}  # (parent, name) -> removed child nodeid or 0
        self.outdated: list[int] = []  # non-directories whose kernel inode may keep old sizes (`evict`)
        self.overflow = False


def parse(buf: memoryview, own: Callable[[int], bool], resolve: Callable[[bytes], int], evict: bool = False) -> Changes:
    """Turn raw fanotify events into changes, skipping those made by `own` pids; with `evict`, a
    changed non-directory's name too (the writeback cache: see the module's comment)."""
    changes = Changes()
    pos, end = 0, len(buf)
    while pos + _META.size <= end:
        event_len, _vers, _res, meta_len, mask, _fd, pid = _META.unpack_from(buf, pos)
        if event_len < _META.size:
            break
        if mask & _linux.FAN_Q_OVERFLOW:
            changes.overflow = True
        elif not own(pid):
            _event(buf, pos + meta_len, pos + event_len, mask, resolve, changes, evict)
        pos += event_len
    return changes


def _event(buf: memoryview, pos: int, end: int, mask: int, resolve: Callable[[bytes], int], changes: Changes,
           evict: bool) -> None:  # fmt: skip
    """One event's records: the object's handle (FID), its directory's handle and name (DFID_NAME).

    A name event (create, delete, move) matters only in a directory the kernel
    knows, and the object of one matters only for a delete (the kernel may hold
    the removed inode); a link count that moved raises its own ATTRIB event.
    So only those handles are resolved, which keeps unrelated activity on the
    same filesystem cheap.
    """
    target = b""
    place: tuple[bytes, bytes] | None = None
    while pos + _INFO.size <= end:
        kind, _pad, length = _INFO.unpack_from(buf, pos)
        if length < _INFO.size:
            return
        hstart = pos + _HANDLE_AT
        hend = hstart + _HANDLE_HEAD.size + _HANDLE_HEAD.unpack_from(buf, hstart)[0]
        if kind == _linux.FAN_EVENT_INFO_TYPE_FID:
            target = bytes(buf[hstart:hend])
        elif kind == _linux.FAN_EVENT_INFO_TYPE_DFID_NAME:
            place = bytes(buf[hstart:hend]), bytes(buf[hend : pos + length]).split(b"\0", 1)[0]
        pos += length
    if place is not None and place[1] == b".":  # an event on a directory itself
        target, place = place[0], None
    if mask & _ENTRY:
        parent = resolve(place[0]) if place is not None else 0
        if parent:
            child = resolve(target) if target and mask & _linux.FAN_DELETE else 0
            changes.inodes[parent] = True  # its mtime, size and link count moved, and its listing
            changes.entries[(parent, place[1])] = child  # type: ignore[index]
            if child:
                changes.inodes.setdefault(child, False)
    elif target:
        nodeid = resolve(target)
        if nodeid:
            changes.inodes[nodeid] = changes.inodes.get(nodeid, False) or bool(mask & _DATA)
            if evict and place is not None and (parent := resolve(place[0])):
                changes.outdated.append(nodeid)
                changes.entries.setdefault((parent, place[1]), 0)


class Kernel(Protocol):
    """Where the watcher's notifications go: the device (`fastpass.transport.dev.Notifier`), or
    libfuse's session (pyfuse3 engine)."""

    def inval_inode(self, nodeid: int, data: bool) -> None: ...

    def inval_entry(self, parent: int, name: bytes, child: int) -> None: ...

    def forget_names(self) -> None: ...


class Watcher:
    """Reads the fanotify fd and tells the kernel what changed."""

    def __init__(self, fan_fd: int, kernel: Kernel, backing: str, inodes: InodeSpace, region: Region,
                 cache: AttrCache | None, own: Callable[[int], bool], counters: memoryview,
                 evict: bool = False):  # fmt: skip
        self.fan_fd = fan_fd
        self.kernel = kernel
        self.mount_fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.inodes = SlotReader(inodes, region)
        self.cache = cache
        self.own = own
        self.counters = counters
        self.evict = evict  # invalidate a changed file's name too (the writeback cache)
        self._keys: dict[bytes, tuple[int, int]] = {}  # handle -> (st_dev, st_ino), kept for deleted inodes

    def resolve(self, handle: bytes) -> int:
        """The nodeid the kernel knows for a handle from an event, or 0."""
        key = self._keys.get(handle)
        if key is None:
            try:
                fd = _linux.open_by_handle(self.mount_fd, handle, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return 0  # gone, and never seen
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            key = (st.st_dev, st.st_ino)
            if len(self._keys) > 65536:
                self._keys.clear()
            self._keys[handle] = key
        return self.inodes.nodeid_of(key, handle)

    def _notify(self, send: Callable[..., None], *args: object) -> None:
        try:
            send(*args)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the kernel holds no such inode or name
                raise
        self.counters[INVALIDATIONS] += 1

    def apply(self, changes: Changes) -> None:
        cache = self.cache
        kernel = self.kernel
        if changes.overflow:  # changes were lost: whatever the kernel keeps may be stale
            log.warning("fanotify queue overflowed: every attribute, page and name the kernel keeps is dropped")
            for nodeid in self.inodes.live():
                if self.evict:
                    self.inodes.outdate(nodeid)  # the kernel keeps a size until it makes a new inode
                if cache is not None:
                    cache.changed(nodeid)
                self._notify(kernel.inval_inode, nodeid, True)
            kernel.forget_names()
        for nodeid in changes.outdated:
            self.inodes.outdate(nodeid)  # before the kernel looks it up again
        for nodeid, data in changes.inodes.items():
            if cache is not None:
                cache.changed(nodeid)  # before the kernel asks again
            self._notify(kernel.inval_inode, nodeid, data)
        for (parent, name), child in changes.entries.items():
            self._notify(kernel.inval_entry, parent, name, child)

    def run(self, root: str | None) -> None:
        """Forever: the supervisor ends this process when the mount ends.

        With default_permissions, `root` (the mountpoint) is stat'ed first, before any
        invalidation is sent.  The kernel makes the root inode at mount time with no permission
        bits, and keeps a GETATTR reply only if no FUSE_NOTIFY_INVAL_INODE of that inode came
        while it was out: a user's first walk through the root, racing an invalidation, would be
        checked against those bits and refused.  Afterwards a lost reply leaves the previous,
        real attributes.
        """
        if root is not None:
            with contextlib.suppress(OSError):
                os.stat(root)
        buf = bytearray(256 * 1024)
        poller = select.poll()
        poller.register(self.fan_fd, select.POLLIN)
        clock = time.monotonic
        window, seen = 0.0, 0  # when the current window began, and the bytes of events read in it
        while True:
            poller.poll()
            if seen >= STREAM:
                time.sleep(BATCH_PAUSE)
            now = clock()
            if now - window > WINDOW:
                window, seen = now, 0
            n = os.readv(self.fan_fd, [buf])
            seen += n
            self.apply(parse(memoryview(buf)[:n], self.own, self.resolve, self.evict))
