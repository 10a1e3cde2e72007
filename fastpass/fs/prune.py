"""Asking the kernel to forget cold inodes (FUSE_NOTIFY_PRUNE, 7.45, Linux 6.18).

Facts that shape it:

* The kernel acts on a prune inside the write(2) of the notification: for
  each nodeid it drops the inode's unused dentries, and an inode nothing
  else holds (no open file, no cwd, no child dentry) is evicted, which
  queues its FORGET.  Ancestors left unused go with it.  Measured on Linux
  6.18: 203 nodeids of a freshly stat'ed tree pruned to the 2 that were in
  use (an open file, a cwd), in one BATCH_FORGET.
* Evicting an inode writes its dirty pages back first (the writeback cache,
  or a shared mmap's pages), and each such write is a WRITE request that a
  worker must answer.  So the notification is written from a thread of its
  own: the worker's request loop goes on meanwhile, and a one-worker mount
  cannot end up waiting on itself.
* The inode table picks the nodeids under its lock (`InodeIndex._cold`) and
  hands them over here; the thread takes them in order.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Callable

from fastpass.shm.counters import PRUNED

log = logging.getLogger("fastpass.prune")

_ENDED = (errno.ENODEV, errno.ECONNABORTED, errno.EBADF)  # the connection (or the worker's fd) is gone


class Pruner:
    """The callable the inode index prunes through (its `prune`), one per worker."""

    def __init__(self, send: Callable[[list[int]], None], misc: memoryview):
        """`send`: the notification's write (`fastpass.transport.dev.Notifier.prune`)."""
        self._send = send
        self._misc = misc  # this worker's counters: PRUNED
        self._queue: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._warned: set[int] = set()

    def __call__(self, nodeids: list[int]) -> None:
        self._misc[PRUNED] += len(nodeids)
        if self._thread is None:  # started at the first prune: most mounts never prune
            self._thread = threading.Thread(target=self._run, name="prune", daemon=True)
            self._thread.start()
        self._queue.put(nodeids)

    def _run(self) -> None:
        while True:
            nodeids = self._queue.get()
            try:
                self._send(nodeids)
            except OSError as e:
                if e.errno in _ENDED:
                    return
                if e.errno not in self._warned:
                    self._warned.add(e.errno)
                    log.warning("FUSE_NOTIFY_PRUNE failed (%s): the kernel forgets inodes only as it likes", e.strerror)
                continue
            log.debug("asked the kernel to forget %d cold inodes", len(nodeids))
