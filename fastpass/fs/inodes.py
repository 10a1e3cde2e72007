"""The inode table: nodeid <-> backing inode, never by path.

Facts that shape it:

* A backing inode is identified by (st_dev, st_ino) while it lives; once it
  is freed its number may be reused.  An open fd pins the inode, so while we
  hold one the key cannot be reused.
* RLIMIT_NOFILE is finite (20000 on the project's machines) and trees are
  larger, so fastpass cannot hold an O_PATH fd for every inode the kernel
  remembers.  Each inode keeps a file handle (`name_to_handle_at`), and its
  O_PATH fd sits in an LRU cache; an evicted fd is reopened from the handle
  (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH).  Where handles are
  not usable (not root, or a filesystem without export support) fds are
  pinned instead and the cache does not evict.
* When a lookup finds a known key whose fd is not cached, the number may
  have been reused: the handles (which carry the inode generation on
  handle-capable filesystems) are compared, and a mismatch makes a new
  inode with a new nodeid and a bumped generation.
* Nodeids come from a counter and are never reused within a mount, so the
  kernel never confuses an old inode with a new one.

The next step (many workers) moves the records into shared memory; the
methods here are the interface the operations use.
"""

from __future__ import annotations

import errno
import os
import resource
from collections import OrderedDict

from fastpass import _linux
from fastpass.kernel.abi import ROOT_ID

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Inode:
    __slots__ = ("fd", "generation", "handle", "key", "mount_id", "nlookup", "nodeid")

    def __init__(self, nodeid: int, key: tuple[int, int], generation: int, handle: bytes | None, mount_id: int, fd: int):
        self.nodeid = nodeid
        self.key = key
        self.generation = generation
        self.handle = handle
        self.mount_id = mount_id
        self.fd = fd  # O_PATH fd, or -1 when evicted
        self.nlookup = 0


def _stale() -> OSError:
    return OSError(errno.ESTALE, os.strerror(errno.ESTALE))


def fd_budget() -> int:
    """Raise the soft fd limit to the hard one; return how many O_PATH fds to keep cached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(64, soft * 3 // 4)


class InodeTable:
    def __init__(self, root_fd: int, fd_cache_size: int):
        st = os.fstat(root_fd)
        self._next = ROOT_ID + 1
        self._by_id: dict[int, Inode] = {}
        self._by_key: dict[tuple[int, int], Inode] = {}
        self._open: OrderedDict[int, Inode] = OrderedDict()  # LRU of inodes holding an fd
        self._capacity = fd_cache_size
        self._mount_fds: dict[int, int] = {}
        handle, mount_id = self._handle(root_fd)
        self.reopen = handle is not None and self._can_reopen(root_fd, handle)
        root = Inode(ROOT_ID, (st.st_dev, st.st_ino), 0, handle, mount_id, root_fd)
        root.nlookup = 1 << 62  # never forgotten
        self.root = root
        self._by_id[ROOT_ID] = root
        self._by_key[root.key] = root
        self._mount_fds[mount_id] = root_fd

    @staticmethod
    def _handle(fd: int) -> tuple[bytes | None, int]:
        try:
            return _linux.name_to_handle(fd)
        except OSError:
            return None, -1

    @staticmethod
    def _can_reopen(fd: int, handle: bytes) -> bool:
        try:
            os.close(_linux.open_by_handle(fd, handle, O_PATH_FLAGS))
            return True
        except OSError:
            return False

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, nodeid: int) -> Inode:
        try:
            return self._by_id[nodeid]
        except KeyError:
            raise _stale() from None

    def fd(self, inode: Inode) -> int:
        """The inode's O_PATH fd, reopened from its handle if it was evicted."""
        fd = inode.fd
        if fd >= 0:
            if inode.nodeid != ROOT_ID:
                self._open.move_to_end(inode.nodeid)
            return fd
        mount_fd = self._mount_fds.get(inode.mount_id)
        if mount_fd is None or inode.handle is None:
            raise _stale()
        inode.fd = _linux.open_by_handle(mount_fd, inode.handle, O_PATH_FLAGS)
        self._cache(inode)
        return inode.fd

    def _cache(self, inode: Inode) -> None:
        self._open[inode.nodeid] = inode
        if self.reopen and len(self._open) > self._capacity:
            _, old = self._open.popitem(last=False)
            os.close(old.fd)
            old.fd = -1

    def lookup(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Resolve `name` in `parent` without following symlinks; counts one lookup."""
        if name == b"." or (name == b".." and parent.nodeid == ROOT_ID):
            st = os.fstat(self.fd(parent))
            parent.nlookup += 1
            return parent, st
        pfd = self.fd(parent)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        known = self._by_key.get((st.st_dev, st.st_ino))
        if known is not None and known.fd >= 0:  # an fd pins it: the number was not reused
            known.nlookup += 1
            return known, st
        fd = os.open(name, O_PATH_FLAGS, dir_fd=pfd)
        try:
            st = os.fstat(fd)
            return self.add(fd, st), st
        except BaseException:
            os.close(fd)
            raise

    def add(self, fd: int, st: os.stat_result) -> Inode:
        """Take ownership of an O_PATH fd for a backing inode; counts one lookup."""
        key = (st.st_dev, st.st_ino)
        known = self._by_key.get(key)
        handle, mount_id = self._handle(fd)
        if known is not None:
            if known.fd >= 0 or known.handle == handle:
                if known.fd < 0:
                    known.fd = fd
                    self._cache(known)
                else:
                    os.close(fd)
                known.nlookup += 1
                return known
            generation = known.generation + 1  # the number was reused by a new inode
        else:
            generation = 0
        inode = Inode(self._next, key, generation, handle, mount_id, fd)
        self._next += 1
        inode.nlookup = 1
        self._by_id[inode.nodeid] = inode
        self._by_key[key] = inode
        if mount_id not in self._mount_fds:  # an anchor for open_by_handle_at on that mount
            self._mount_fds[mount_id] = os.dup(fd)
        self._cache(inode)
        return inode

    def forget(self, nodeid: int, nlookup: int) -> None:
        inode = self._by_id.get(nodeid)
        if inode is None or nodeid == ROOT_ID:
            return
        inode.nlookup -= nlookup
        if inode.nlookup > 0:
            return
        del self._by_id[nodeid]
        if self._by_key.get(inode.key) is inode:
            del self._by_key[inode.key]
        if inode.fd >= 0:
            del self._open[nodeid]
            os.close(inode.fd)
            inode.fd = -1
