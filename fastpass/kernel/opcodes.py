"""The protocol table: what each opcode carries in and whether it is answered.

One row per opcode, as in libfuse's table.  `decoder()` turns a row into a
function from the request body (a memoryview after the in-header) to the
tuple of arguments a handler receives, in this order:

    *fixed struct fields, *names (bytes, NUL stripped), tail (if any)

Tails: "data" is the WRITE payload (a memoryview, not copied), "value" the
SETXATTR value (bytes), "forgets" the BATCH_FORGET list of (nodeid, nlookup),
which replaces the fixed fields (its only field is the list's length).
SETXATTR uses the 8-byte compat struct: fastpass does not negotiate
SETXATTR_EXT.
Short or malformed bodies raise `Malformed`, which the worker answers with
EINVAL; decoding never touches an fd.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from fastpass.kernel import abi
from fastpass.kernel.abi import Opcode as O


class Malformed(ValueError):
    """A request body that does not match its opcode's layout."""


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str
    arg: struct.Struct | None = None
    names: int = 0
    tail: str | None = None
    reply: bool = True


SPECS: dict[int, OpSpec] = {
    O.LOOKUP: OpSpec("LOOKUP", names=1),
    O.FORGET: OpSpec("FORGET", abi.FORGET_IN, reply=False),
    O.GETATTR: OpSpec("GETATTR", abi.GETATTR_IN),
    O.SETATTR: OpSpec("SETATTR", abi.SETATTR_IN),
    O.READLINK: OpSpec("READLINK"),
    O.SYMLINK: OpSpec("SYMLINK", names=2),  # name, then target
    O.MKNOD: OpSpec("MKNOD", abi.MKNOD_IN, names=1),
    O.MKDIR: OpSpec("MKDIR", abi.MKDIR_IN, names=1),
    O.UNLINK: OpSpec("UNLINK", names=1),
    O.RMDIR: OpSpec("RMDIR", names=1),
    O.RENAME: OpSpec("RENAME", abi.RENAME_IN, names=2),
    O.LINK: OpSpec("LINK", abi.LINK_IN, names=1),
    O.OPEN: OpSpec("OPEN", abi.OPEN_IN),
    O.READ: OpSpec("READ", abi.READ_IN),
    O.WRITE: OpSpec("WRITE", abi.WRITE_IN, tail="data"),
    O.STATFS: OpSpec("STATFS"),
    O.RELEASE: OpSpec("RELEASE", abi.RELEASE_IN),
    O.FSYNC: OpSpec("FSYNC", abi.FSYNC_IN),
    O.SETXATTR: OpSpec("SETXATTR", abi.SETXATTR_IN_COMPAT, names=1, tail="value"),
    O.GETXATTR: OpSpec("GETXATTR", abi.GETXATTR_IN, names=1),
    O.LISTXATTR: OpSpec("LISTXATTR", abi.GETXATTR_IN),
    O.REMOVEXATTR: OpSpec("REMOVEXATTR", names=1),
    O.FLUSH: OpSpec("FLUSH", abi.FLUSH_IN),
    O.INIT: OpSpec("INIT", abi.INIT_IN),
    O.OPENDIR: OpSpec("OPENDIR", abi.OPEN_IN),
    O.READDIR: OpSpec("READDIR", abi.READ_IN),
    O.RELEASEDIR: OpSpec("RELEASEDIR", abi.RELEASE_IN),
    O.FSYNCDIR: OpSpec("FSYNCDIR", abi.FSYNC_IN),
    O.GETLK: OpSpec("GETLK"),
    O.SETLK: OpSpec("SETLK"),
    O.SETLKW: OpSpec("SETLKW"),
    O.ACCESS: OpSpec("ACCESS", abi.ACCESS_IN),
    O.CREATE: OpSpec("CREATE", abi.CREATE_IN, names=1),
    O.INTERRUPT: OpSpec("INTERRUPT", abi.INTERRUPT_IN, reply=False),
    O.BMAP: OpSpec("BMAP"),
    O.DESTROY: OpSpec("DESTROY"),
    O.IOCTL: OpSpec("IOCTL"),
    O.POLL: OpSpec("POLL"),
    O.NOTIFY_REPLY: OpSpec("NOTIFY_REPLY", reply=False),
    O.BATCH_FORGET: OpSpec("BATCH_FORGET", abi.BATCH_FORGET_IN, tail="forgets", reply=False),
    O.FALLOCATE: OpSpec("FALLOCATE", abi.FALLOCATE_IN),
    O.READDIRPLUS: OpSpec("READDIRPLUS", abi.READ_IN),
    O.RENAME2: OpSpec("RENAME2", abi.RENAME2_IN, names=2),
    O.LSEEK: OpSpec("LSEEK", abi.LSEEK_IN),
    O.COPY_FILE_RANGE: OpSpec("COPY_FILE_RANGE", abi.COPY_FILE_RANGE_IN),
    O.SETUPMAPPING: OpSpec("SETUPMAPPING"),
    O.REMOVEMAPPING: OpSpec("REMOVEMAPPING"),
    O.SYNCFS: OpSpec("SYNCFS", abi.SYNCFS_IN),
    O.TMPFILE: OpSpec("TMPFILE", abi.CREATE_IN, names=1),
    O.STATX: OpSpec("STATX", abi.STATX_IN),
    O.COPY_FILE_RANGE_64: OpSpec("COPY_FILE_RANGE_64", abi.COPY_FILE_RANGE_IN),
}

Decoder = Callable[[memoryview], tuple]


def _split_names(raw: bytes, n: int) -> list[bytes]:
    parts = raw.split(b"\0", n)
    if len(parts) <= n:
        raise Malformed("name not NUL-terminated")
    return parts


def decoder(spec: OpSpec) -> Decoder:
    """Build the body decoder for one row."""
    arg = spec.arg
    fixed = arg.size if arg else 0
    n = spec.names
    tail = spec.tail

    if tail == "data":
        unpack = arg.unpack_from

        def decode_write(body: memoryview) -> tuple:
            try:
                fields = unpack(body)
            except struct.error as e:
                raise Malformed(str(e)) from None
            size = fields[2]
            if len(body) < fixed + size:
                raise Malformed("write payload shorter than its size")
            return (*fields, body[fixed : fixed + size])

        return decode_write

    if tail == "forgets":
        one = abi.FORGET_ONE

        def decode_forgets(body: memoryview) -> tuple:
            try:
                (count,) = arg.unpack_from(body)
            except struct.error as e:
                raise Malformed(str(e)) from None
            end = fixed + count * one.size
            if len(body) < end:
                raise Malformed(f"BATCH_FORGET of {count} carries {(len(body) - fixed) // one.size}")
            return (list(one.iter_unpack(body[fixed:end])),)

        return decode_forgets

    if tail == "value":
        unpack = arg.unpack_from

        def decode_xattr(body: memoryview) -> tuple:
            try:
                fields = unpack(body)
            except struct.error as e:
                raise Malformed(str(e)) from None
            name, rest = _split_names(bytes(body[fixed:]), 1)
            if len(rest) < fields[0]:
                raise Malformed("xattr value shorter than its size")
            return (*fields, name, rest[: fields[0]])

        return decode_xattr

    if arg is None and n == 0:
        return lambda body: ()

    if arg is None and n == 1:

        def decode_name(body: memoryview) -> tuple:
            raw = bytes(body)
            end = raw.find(b"\0")
            if end < 0:
                raise Malformed("name not NUL-terminated")
            return (raw[:end],)

        return decode_name

    if n == 0:
        unpack = arg.unpack_from

        def decode_fixed(body: memoryview) -> tuple:
            try:
                return unpack(body)
            except struct.error as e:
                raise Malformed(str(e)) from None

        return decode_fixed

    def decode_fixed_names(body: memoryview) -> tuple:
        try:
            fields = arg.unpack_from(body) if arg else ()
        except struct.error as e:
            raise Malformed(str(e)) from None
        return (*fields, *_split_names(bytes(body[fixed:]), n)[:n])

    return decode_fixed_names
