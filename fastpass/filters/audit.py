"""`audit`: one JSON line per operation (who, what, result, latency), appended to a file.

Each line: {"time": epoch seconds, "op", "uid", "gid", "pid", "path", "errno"
(0 for success), "us" (latency through the filters below audit and the
backing)}.  Every worker keeps its own buffer of whole lines and writes it
with one write(2) on an O_APPEND fd, so lines from many workers never
interleave; it writes when the buffer passes 64 KiB, when its oldest line
is a second old, when the worker is idle (within a second), and when the
worker exits.  A worker killed with SIGKILL loses what it had buffered.

`data=no` leaves READ and WRITE out of the log and files cached and in
kernel passthrough; by default every read and write is logged, so files
are read and written through the workers.
"""

from __future__ import annotations

import os
import time

import msgspec

from fastpass.filters.api import POSTFILTER, Args, Context, Decision, Filter

FLUSH_BYTES = 64 * 1024
FLUSH_AGE = 1.0  # seconds


class Record(msgspec.Struct):
    time: float
    op: str
    uid: int
    gid: int
    pid: int
    path: str | None
    errno: int
    us: float


def _printable(path: str) -> str:
    """Names that are not UTF-8 (surrogate-escaped by os.fsdecode) keep their bytes as \\x escapes."""
    return path if path.isascii() else os.fsencode(path).decode("utf-8", "backslashreplace")


class Audit(Filter):
    sees_errors = True

    def __init__(self, path: str, data: str = "yes"):
        if data not in ("yes", "no"):
            raise ValueError(f"audit: data must be yes or no, not {data!r}")
        self._data = data == "yes"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lines: list[bytes] = []
        self._size = 0
        self._since = 0.0
        self._encode = msgspec.json.Encoder().encode

    def pre(self, ctx: Context, args: Args) -> Decision:
        return POSTFILTER

    def post(self, ctx: Context, args: Args, result: object) -> None:
        try:
            path: str | None = _printable(ctx.path)
        except OSError:
            path = None  # the inode is gone; the line is still written
        now = time.perf_counter_ns()
        line = self._encode(Record(time.time(), ctx.op, ctx.uid, ctx.gid, ctx.pid, path, ctx.error,
                                   (now - ctx.start_ns) / 1e3)) + b"\n"  # fmt: skip
        if not self._lines:
            self._since = time.monotonic()
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES or time.monotonic() - self._since >= FLUSH_AGE:
            self.flush()

    def needs_data(self, ctx: Context, flags: int) -> bool:
        return self._data

    def flush(self) -> None:
        """Whole lines, at most FLUSH_BYTES and one write(2) at a time, so appends never split a line."""
        lines, self._lines, self._size = self._lines, [], 0
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > FLUSH_BYTES:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
