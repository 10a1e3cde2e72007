"""Request buffers: the one layout every read of /dev/fuse lands in, and the ring's fixed pool.

A buffer is an anonymous mmap placed so that a WRITE's payload (after the
40-byte in-header and the 40-byte write_in) starts on a page boundary: the
payload goes to the backing without a copy, and O_DIRECT backing writes get
the alignment they need.  The same page-aligned region serves a READ's data
on the ring path: the request has been decoded by then, so a slot needs one
buffer, not two.

Memory: a buffer is max_write + 2 pages of address space (1 MiB + 8 KiB),
touched only as far as requests fill it; a pool of `depth` buffers is the
ring worker's whole data memory, fixed at start-up (`--io-depth`).
"""

from __future__ import annotations

import mmap

from fastpass.kernel import abi
from fastpass.kernel.init import MAX_WRITE

HEAD = abi.IN_HEADER.size + abi.WRITE_IN.size  # 80: where a WRITE's payload starts
PAGE = mmap.PAGESIZE
SIZE = PAGE + MAX_WRITE + PAGE  # mapped per buffer


def request_buffer() -> memoryview:
    """A buffer big enough for any request (the read-buffer rule), its payload page aligned."""
    return memoryview(mmap.mmap(-1, SIZE))[PAGE - HEAD :]


class BufferPool:
    """`depth` request buffers, each with a slot number; a slot is free or carries one request."""

    def __init__(self, depth: int):
        self.bufs = [request_buffer() for _ in range(depth)]
        self.data = [buf[HEAD:] for buf in self.bufs]  # page aligned: a READ's data on the ring

    def __len__(self) -> int:
        return len(self.bufs)
