"""`quota`: a limit on how many bytes files may grow by through the mount, shared by all workers.

Growth is counted where it happens: a write past end of file, a truncate
up (SETATTR size), fallocate without KEEP_SIZE past the end (and
INSERT_RANGE), copy_file_range past the destination's end.  A request that
would take the total past the limit fails with EDQUOT and changes nothing.
Shrinking gives bytes back: a truncate down, an open with O_TRUNC,
fallocate COLLAPSE_RANGE.  Removing a file does not: its blocks may live on
through other links or open files, and the limit is on growth, not on what
the backing holds.  Only changes made through the mount count; the count
starts at 0 at mount time.

The total lives in a shared mapping made before the workers fork, changed
under a lock of that mapping (a robust process-shared mutex,
`fastpass.shm.region`).  Each request reserves its growth before the
backing call and gives back what it did not use after it (a short write, a
failure), so concurrent requests never overshoot the limit.  Two requests
growing the same file at once may both count the same bytes: the count
errs high, never low.
"""

from __future__ import annotations

import errno
import os

from fastpass.filters.api import CONTINUE, POSTFILTER, Args, Context, Decision, Filter
from fastpass.kernel.abi import Fattr
from fastpass.shm.region import U64, Region

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_WRITABLE = os.O_WRONLY | os.O_RDWR
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_INSERT_RANGE = 0x20
_COUNTER = 0  # offset of the total in the region, and the byte its lock covers


def parse_size(text: str) -> int:
    """Bytes in "1048576", "512K", "10M", "2G" (powers of 1024; a trailing "B" or "iB" is allowed)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in _UNITS else (t, "")
    try:
        value = int(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"quota: bytes must be a number with an optional K, M, G or T, not {text!r}") from None
    if value < 0:
        raise ValueError("quota: bytes must not be negative")
    return value


class Quota(Filter):
    sees_errors = True  # a failed request gives back what it reserved

    def __init__(self, bytes: str):
        self.limit = parse_size(bytes)
        self._region = Region(U64.size, locks=1)
        # (change asked for, the file's size before) of the request in progress in this worker:
        # a worker serves one request at a time, and its pre- and post-filter run in it.
        self._pending = (0, 0)

    @property
    def used(self) -> int:
        return U64.unpack_from(self._region.map, _COUNTER)[0]

    def _change(self, delta: int) -> None:
        """Add `delta` bytes to the total (never below 0); EDQUOT if growth would pass the limit."""
        region = self._region
        region.lock(_COUNTER)
        try:
            total = U64.unpack_from(region.map, _COUNTER)[0]
            if delta > 0 and total + delta > self.limit:
                raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
            U64.pack_into(region.map, _COUNTER, max(0, total + delta))
        finally:
            region.unlock(_COUNTER)

    def _begin(self, change: int, size: int) -> Decision:
        """Reserve growth now; a shrink is given back once it has happened."""
        if change > 0:
            self._change(change)
        self._pending = (change, size)
        return POSTFILTER

    def _end(self, ctx: Context, done: int) -> None:
        """The request changed sizes by `done` (nothing if it failed): correct what `_begin` counted."""
        change, _ = self._pending
        self._pending = (0, 0)
        delta = (0 if ctx.error else done) - max(change, 0)
        if delta:
            self._change(delta)

    def pre_write(self, ctx: Context, args: Args) -> Decision:
        size = ctx.stat().st_size
        return self._begin(args.offset + len(args.data) - size, size)  # type: ignore[attr-defined]

    def post_write(self, ctx: Context, args: Args, written: int | None) -> None:
        self._end(ctx, max(0, args.offset + (written or 0) - self._pending[1]))  # type: ignore[attr-defined]

    def pre_copy_file_range(self, ctx: Context, args: Args) -> Decision:
        a = args
        size = ctx.stat(a.nodeid_out).st_size  # type: ignore[attr-defined]
        most = min(a.length, max(0, ctx.stat().st_size - a.off_in))  # type: ignore[attr-defined]
        return self._begin(a.off_out + most - size, size)  # type: ignore[attr-defined]

    def post_copy_file_range(self, ctx: Context, args: Args, copied: int | None) -> None:
        self._end(ctx, max(0, args.off_out + (copied or 0) - self._pending[1]))  # type: ignore[attr-defined]

    def pre_fallocate(self, ctx: Context, args: Args) -> Decision:
        a = args
        size = ctx.stat().st_size
        if a.mode & FALLOC_FL_INSERT_RANGE:  # type: ignore[attr-defined]
            return self._begin(a.length, size)  # type: ignore[attr-defined]
        if a.mode & FALLOC_FL_COLLAPSE_RANGE:  # type: ignore[attr-defined]
            return self._begin(-a.length, size)  # type: ignore[attr-defined]
        if a.mode & FALLOC_FL_KEEP_SIZE:  # type: ignore[attr-defined]
            return CONTINUE
        return self._begin(max(0, a.offset + a.length - size), size)  # type: ignore[attr-defined]

    def pre_setattr(self, ctx: Context, args: Args) -> Decision:
        if not args.valid & Fattr.SIZE:  # type: ignore[attr-defined]
            return CONTINUE
        size = ctx.stat().st_size
        return self._begin(args.size - size, size)  # type: ignore[attr-defined]

    def pre_open(self, ctx: Context, args: Args) -> Decision:
        if not args.flags & os.O_TRUNC:  # type: ignore[attr-defined]
            return CONTINUE
        size = ctx.stat().st_size
        return self._begin(-size, size)

    def _post_resized(self, ctx: Context, args: Args, result: object) -> None:
        """After a change of size by what `_begin` was told: as asked, or nothing if it failed."""
        self._end(ctx, self._pending[0])

    post_fallocate = post_setattr = post_open = _post_resized

    def needs_data(self, ctx: Context, flags: int) -> bool:
        return bool(flags & _WRITABLE)
