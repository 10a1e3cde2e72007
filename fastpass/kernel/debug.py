"""Readable one-line forms of requests and replies, flags by name (--debug)."""

from __future__ import annotations

import errno
import os

from fastpass.kernel.abi import Fattr, Opcode

_OPEN_FLAGS = [
    (name, getattr(os, name))
    for name in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK",
                 "O_DSYNC", "O_DIRECT", "O_LARGEFILE", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC",
                 "O_SYNC", "O_PATH", "O_TMPFILE")
    if hasattr(os, name)
]


def open_flags(flags: int) -> str:
    names = [name for name, bit in _OPEN_FLAGS if bit and flags & bit == bit]
    if not flags & (os.O_WRONLY | os.O_RDWR):
        names.insert(0, "O_RDONLY")
    return "|".join(names)


def _fmt(value: object) -> str:
    if isinstance(value, (bytes, memoryview)):
        raw = bytes(value)
        return repr(raw if len(raw) <= 64 else raw[:64] + b"...") + f"[{len(raw)}]"
    if isinstance(value, list):
        return f"[{len(value)} items]"
    return str(value)


def describe_request(name: str, req: object, args: tuple) -> str:
    shown = [_fmt(a) for a in args]
    if req.opcode in (Opcode.OPEN, Opcode.OPENDIR, Opcode.CREATE, Opcode.TMPFILE) and args:  # type: ignore[attr-defined]
        shown[0] = open_flags(args[0])
    elif req.opcode == Opcode.SETATTR and args:  # type: ignore[attr-defined]
        shown[0] = Fattr(args[0]).name or "0"
    return (f"{req.unique} {name} node={req.nodeid} uid={req.uid} gid={req.gid} pid={req.pid} "  # type: ignore[attr-defined]
            f"({', '.join(shown)})")  # fmt: skip


def describe_reply(name: str, unique: int, error: int, body: object) -> str:
    if error:
        return f"{unique} {name} error {errno.errorcode.get(-error, str(-error))}"
    return f"{unique} {name} ok {len(body) if body is not None else 0} bytes"  # type: ignore[arg-type]
