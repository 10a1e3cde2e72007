"""Open-file and open-directory handles: the `fh` the kernel hands back.

An fh is a small integer naming one backing open file description, so every
READ, WRITE, FSYNC and RELEASE on it has the semantics of that one open file
(O_APPEND, an unlinked file kept open).  fh values are never 0 and are not
reused while open.
"""

from __future__ import annotations

import errno
import os
from collections import deque


class DirHandle:
    """An open backing directory and the entries read but not yet sent.

    `pos` is the offset (the backing's own d_off cookie) of `pending[0]`, so a
    READDIR at that offset continues without a seek, and any other offset
    (seekdir, rewinddir) seeks the backing directory there.
    """

    __slots__ = ("fd", "pending", "pos")

    def __init__(self, fd: int):
        self.fd = fd
        self.pos = 0
        self.pending: deque[tuple[int, int, int, bytes]] = deque()  # (ino, next_off, type, name)


class HandleTable:
    def __init__(self) -> None:
        self._next = 1
        self._files: dict[int, int | DirHandle] = {}

    def __len__(self) -> int:
        return len(self._files)

    def add(self, obj: int | DirHandle) -> int:
        fh = self._next
        self._next += 1
        self._files[fh] = obj
        return fh

    def fd(self, fh: int) -> int:
        """Backing fd of an open file."""
        obj = self._files.get(fh)
        if obj is None or obj.__class__ is not int:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return obj

    def dir(self, fh: int) -> DirHandle:
        obj = self._files.get(fh)
        if obj is None or obj.__class__ is not DirHandle:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return obj

    def close(self, fh: int) -> None:
        obj = self._files.pop(fh, None)
        if obj is not None:
            os.close(obj if obj.__class__ is int else obj.fd)

    def close_all(self) -> None:
        for fh in list(self._files):
            self.close(fh)
