"""Request buffers: the one layout every read of /dev/fuse lands in, and the ring's fixed pool.

A buffer is a stretch of an anonymous mmap placed so that a WRITE's payload
(after the 40-byte in-header and the 40-byte write_in) starts on a page
boundary: the payload goes to the backing without a copy, and O_DIRECT
backing writes get the alignment they need.  The same page-aligned region
serves a READ's data on the ring path: the request has been decoded by then,
so a slot needs one buffer, not two.

The pool is one mapping, so a worker's ring registers it as one fixed buffer
(`Ring.register_buffers`): reads and writes into it are READ_FIXED and
WRITE_FIXED, whose pages the kernel pinned once instead of on every O_DIRECT
call.  Memory: a buffer is max_write + 2 pages (1 MiB + 8 KiB); a pool of
`depth` buffers is the ring worker's whole data memory, fixed at start-up
(`--io-depth`), and resident once registered.
"""

from __future__ import annotations

import mmap
import os

from fastpass.kernel import abi
from fastpass.kernel.init import MAX_WRITE

HEAD = abi.IN_HEADER.size + abi.WRITE_IN.size  # 80: where a WRITE's payload starts
PAGE = mmap.PAGESIZE
SIZE = PAGE + MAX_WRITE + PAGE  # mapped per buffer


class BufferPool:
    """`depth` request buffers, each with a slot number; a slot is free or carries one request."""

    def __init__(self, depth: int, attach: int | None = None):
        """`depth` buffers in a memfd of their own (`attach`: one handed over, `fastpass.restart`)."""
        self.fd = os.memfd_create("fastpass-buffers", os.MFD_CLOEXEC) if attach is None else attach
        if attach is None:
            os.ftruncate(self.fd, depth * SIZE)
        self.memory = mmap.mmap(self.fd, depth * SIZE)
        whole = memoryview(self.memory)
        self.bufs = [whole[i * SIZE + PAGE - HEAD : (i + 1) * SIZE] for i in range(depth)]
        self.data = [buf[HEAD:] for buf in self.bufs]  # page aligned: a READ's data on the ring

    def __len__(self) -> int:
        return len(self.bufs)
