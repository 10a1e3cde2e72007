"""The inode table: nodeid <-> backing inode, as one worker serves it, never by path.

The nodeids and their backing inodes are shared by every worker
(`fastpass.fs.slots`, changed through `fastpass.fs.inode_index`); what is a
worker's own is here: its views of the slots and their O_PATH fds.

Facts that shape it:

* Each worker keeps its own O_PATH fds, opened lazily from the handle
  (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH) and kept in an LRU
  that gives way to open files (`fastpass.fs.fds`); views without an fd are
  dropped too, so a worker's memory follows its fds, not the table.  A local fd pins the
  inode, so while this worker holds one, a lookup of the same
  (st_dev, st_ino) needs no handle comparison.  Without usable handles (not
  root, or a filesystem without export support) fds are pinned and never
  evicted, and one worker serves.
* When a worker's FORGET frees a slot, the nodeid goes into a ring of freed
  nodeids, from which every other worker closes its own fd for it (`sync`,
  at the top of each request).  A passthrough backing id the slot still held
  (a read-only file's, kept idle) is closed by the worker that freed it.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from fastpass import _linux
from fastpass.fs.fds import FLOOR, FdBudget
from fastpass.fs.inode_index import InodeIndex
from fastpass.fs.passthrough import Passthrough
from fastpass.fs.slots import Inode, handle_of, stale
from fastpass.kernel.abi import ROOT_ID

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _anchor(path: bytes | str) -> int | None:
    """An fd open_by_handle_at accepts as its mount_fd: a real open of the directory (O_PATH gives EBADF)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def can_reopen(mount_fd: int, handle: bytes) -> bool:
    """Whether open_by_handle_at works here (it needs CAP_DAC_READ_SEARCH)."""
    try:
        os.close(_linux.open_by_handle(mount_fd, handle, O_PATH_FLAGS))
        return True
    except OSError:
        return False


class InodeTable:
    """One worker's inodes: views of the shared slots, each with this worker's O_PATH fd."""

    def __init__(self, index: InodeIndex, root_fd: int, fds: FdBudget, passthrough: Passthrough | None = None):
        """`passthrough`: where passthrough is on, what closes the backing id of an inode forgotten."""
        self.index = index
        self._passthrough = passthrough
        # The index's calls a request makes, bound once.
        self._view, self._count, self._take, self._forget = index.view, index.count, index.take, index.forget
        self._ring_seq = index.ring_seq
        self._fds = fds
        self._uid = os.geteuid()
        self._local: dict[int, Inode] = {}  # nodeid -> this worker's view
        self._local_limit = fds.limit + 1024  # views kept before those without an fd are shed
        self._local_keys: dict[tuple[int, int], Inode] = {}
        self._open: OrderedDict[int, Inode] = OrderedDict()  # LRU of views holding an fd (not the root)
        st = os.fstat(root_fd)
        handle, mount_id = handle_of(root_fd)
        anchor = _anchor(f"/proc/self/fd/{root_fd}")
        self.reopen = handle is not None and anchor is not None and can_reopen(anchor, handle)
        self._mount_fds = {mount_id: anchor} if self.reopen else {}
        fds.paths, fds.shed_paths, fds.paths_pinned = self._open, self._shed, not self.reopen
        self._seen = self._ring_seq()
        self.root = Inode(ROOT_ID, (st.st_dev, st.st_ino), handle, mount_id, root_fd)
        self._local[ROOT_ID] = self.root

    def get(self, nodeid: int) -> Inode:
        inode = self._local.get(nodeid)
        if inode is not None:
            return inode
        inode = self._view(nodeid)
        if len(self._local) >= self._local_limit:
            self._shed_views()
        self._local[nodeid] = inode
        return inode

    def _shed_views(self) -> None:
        """Drop the views that hold no fd (a later `get` makes them again from the slot)."""
        self._local = {n: v for n, v in self._local.items() if v.fd >= 0}
        self._local_limit = max(2 * len(self._local), self._fds.limit + 1024)

    def fd(self, inode: Inode) -> int:
        """The inode's O_PATH fd in this worker, opened from its handle if need be."""
        fd = inode.fd
        if fd >= 0:
            if inode.nodeid != ROOT_ID:
                self._open.move_to_end(inode.nodeid)
            return fd
        if inode.handle is None:
            raise stale()
        mount_fd = self._mount_fd(inode.mount_id)
        try:
            inode.fd = _linux.open_by_handle(mount_fd, inode.handle, O_PATH_FLAGS)
        except PermissionError:
            # Serving a caller (allow_other): its fsuid dropped our CAP_DAC_READ_SEARCH.  An
            # O_PATH fd grants nothing by itself, so take it as the server and go back.
            with _linux.fsuid(self._uid):
                inode.fd = _linux.open_by_handle(mount_fd, inode.handle, O_PATH_FLAGS)
        self._keep(inode)
        return inode.fd

    def _mount_fd(self, mount_id: int) -> int:
        """An fd on the mount a handle belongs to (open_by_handle_at needs one), from mountinfo."""
        fd = self._mount_fds.get(mount_id)
        if fd is None:
            with open("/proc/self/mountinfo", "rb") as f:
                for line in f:
                    fields = line.split(b" ", 5)
                    if int(fields[0]) == mount_id:
                        fd = _anchor(fields[4])
                        break
            if fd is None:
                raise stale()
            self._mount_fds[mount_id] = fd
        return fd

    def _keep(self, inode: Inode) -> None:
        self._open[inode.nodeid] = inode
        self._local_keys[inode.key] = inode
        self._fds.trim()

    def _shed(self, n: int) -> int:
        """Close up to `n` of the least recently used fds, FLOOR staying, and drop their views (a
        later `get` makes them again from the slot); how many were closed."""
        n = min(n, len(self._open) - FLOOR) if self.reopen else 0
        for _ in range(n):
            old = self._open.popitem(last=False)[1]
            self._close_local(old)
            self._local.pop(old.nodeid, None)
        return max(n, 0)

    def _close_local(self, inode: Inode) -> None:
        if inode.fd >= 0:
            os.close(inode.fd)
            inode.fd = -1
        if self._local_keys.get(inode.key) is inode:
            del self._local_keys[inode.key]

    def _drop(self, nodeid: int) -> None:
        """Forget this worker's view of a freed nodeid, closing its fd."""
        inode = self._local.pop(nodeid, None)
        if inode is not None:
            self._open.pop(nodeid, None)
            self._close_local(inode)

    def sync(self) -> None:
        """Close the fds of nodeids other workers have freed since the last call."""
        seq = self._ring_seq()
        if seq == self._seen:
            return
        for nodeid in self.index.freed(self._seen, seq, self._local):
            self._drop(nodeid)
        self._seen = seq

    def lookup(self, parent: Inode, name: bytes, ino: int = 0) -> tuple[Inode, os.stat_result]:
        """Resolve `name` in `parent` without following symlinks; counts one lookup.

        `ino`, the entry's d_ino from getdents where the caller has it, spares the stat
        for a name whose inode this worker does not hold: it is opened straight away (on
        ext4, a cold 10,000-entry listing took 11.3 us an entry so, against 18.5 with the
        stat first).  A d_ino that differs from st_ino (overlayfs) only costs that stat.
        """
        if name == b"." or (name == b".." and parent.nodeid == ROOT_ID):
            st = os.fstat(self.fd(parent))
            self._count(parent.nodeid, 1)
            return parent, st
        pfd = self.fd(parent)
        if not ino or self.holds(parent, ino):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            known = self._local_keys.get((st.st_dev, st.st_ino))
            if known is not None and known.fd >= 0 and self._count(known.nodeid, 1):  # pinned: the number is not reused
                return known, st
        return self.adopt(os.open(name, O_PATH_FLAGS, dir_fd=pfd))

    def holds(self, parent: Inode, ino: int) -> bool:
        """Whether this worker holds an fd on inode number `ino` of `parent`'s filesystem."""
        return (parent.key[0], ino) in self._local_keys

    def adopt(self, fd: int) -> tuple[Inode, os.stat_result]:
        """Take ownership of a fresh O_PATH fd (closed on failure); counts one lookup."""
        try:
            st = os.fstat(fd)
            return self.add(fd, st), st
        except BaseException:
            os.close(fd)
            raise

    def add(self, fd: int, st: os.stat_result) -> Inode:
        """Take ownership of an O_PATH fd for a backing inode; counts one lookup (`InodeIndex.take`:
        a new slot may be refused, ENFILE)."""
        key = (st.st_dev, st.st_ino)
        handle, mount_id = handle_of(fd)
        nodeid = self._take(key, handle, mount_id, st.st_mode)
        inode = self._local.get(nodeid)
        if inode is None:
            inode = self._local[nodeid] = Inode(nodeid, key, handle, mount_id, -1)
        if inode.fd < 0:
            inode.fd = fd
            self._keep(inode)
        else:
            os.close(fd)
        return inode

    def forget(self, nodeid: int, nlookup: int) -> None:
        freed = self._forget(nodeid, nlookup)
        if freed is None:
            return
        pushed, backing_id = freed
        if backing_id:
            self._passthrough.close(backing_id)  # type: ignore[union-attr]  # only passthrough registers ids
        self._drop(nodeid)
        if pushed == self._seen:  # caught up before our own entry: `sync` need not read it back
            self._seen = pushed + 1
