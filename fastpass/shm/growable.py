"""A shared file that only grows: each process maps what it has seen of it, and maps again on meeting more.

Facts that shape it:

* A table whose size is fixed before the fork is a bound that the busiest
  user of a mount reaches for everybody (a tree walk fills an inode table).
  So such a table lives in a memfd of its own that grows with `ftruncate`
  and keeps what it holds at the same offsets: nothing moves, so no other
  process needs to hear of a growth but its new size.
* A MAP_SHARED mapping made before the fork is the same memory in every
  process, but a mapping made later is its process's own.  So the size
  lives in shared memory as well (the owner's header, written under the
  lock that orders growth), and each process maps the file again, whole,
  when it meets an offset past what it has mapped.  The old mapping is
  closed, so a process's page tables (and its RSS) count each page once.
* The memfd is sparse: a page is allocated when first touched, so the table
  costs what it holds, not what it may grow to.
"""

from __future__ import annotations

import mmap
import os


def create(name: str, size: int) -> int:
    """A sparse memfd of `size` bytes (before the fork: every process inherits the fd)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)  # fork keeps it; exec does not
    os.ftruncate(fd, size)
    return fd


class Growable:
    """One user's mapping of a growing memfd."""

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size  # bytes mapped here
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def grow(self, size: int) -> None:
        """Make the file `size` bytes (more than now) and map it; the caller holds the lock that
        orders growth and publishes the new size once this returns."""
        os.ftruncate(self.fd, size)
        self.remap(size)

    def remap(self, size: int) -> None:
        """Map the file's first `size` bytes (it has grown that far).  The old map object is
        closed: its users must take `map` again."""
        old = self.map
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.size = size
        old.close()

    def close(self) -> None:
        self.map.close()
