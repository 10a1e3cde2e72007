"""Reply bodies <-> the typed results of `fastpass.filters.api`, per operation.

Only filtered requests with a post-filter or a USER answer pay for this: the
handlers still return encoded bytes, which are decoded here with the abi
structs (so each layout stays in one place), handed to the filters, and
encoded again.  `counted()` names the lookups a result carries, so that
the filter stack can forget those a filter dropped (the kernel only forgets
nodeids it was told about).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

from fastpass.filters.api import Attr, AttrReply, Created, Dirent, Entry, Opened, Statfs
from fastpass.kernel import abi, encode
from fastpass.kernel.abi import Opcode as O

_ENTRY = abi.ENTRY_OUT_SIZE
_HEAD = len(abi.ENTRY_OUT_HEAD.unpack(bytes(abi.ENTRY_OUT_HEAD.size)))  # 6 fields before the attr
_attr_values = operator.attrgetter(*(f.name for f in dataclasses.fields(Attr)))


def _entry(raw: bytes | memoryview, at: int = 0) -> Entry:
    v = abi.ENTRY_OUT.unpack_from(raw, at)
    return Entry(*v[:_HEAD], Attr(*v[_HEAD:]))


def _pack_entry(e: Entry) -> bytes:
    return abi.ENTRY_OUT.pack(e.nodeid, e.generation, e.entry_valid, e.attr_valid, e.entry_valid_nsec,
                              e.attr_valid_nsec, *_attr_values(e.attr))  # fmt: skip


def _attr_reply(raw: bytes | memoryview, args: Any) -> AttrReply:
    valid, nsec, _dummy, *attr = abi.ATTR_OUT.unpack(raw)
    return AttrReply(valid, nsec, Attr(*attr))


def _pack_attr_reply(r: AttrReply, args: Any) -> bytes:
    return abi.ATTR_OUT.pack(r.attr_valid, r.attr_valid_nsec, 0, *_attr_values(r.attr))


def _opened(raw: bytes | memoryview, args: Any) -> Opened:
    return Opened(*abi.OPEN_OUT.unpack(raw))


def _pack_opened(o: Opened, args: Any) -> bytes:
    return encode.open_out(o.fh, o.open_flags, o.backing_id)


def _created(raw: bytes | memoryview, args: Any) -> Created:
    return Created(_entry(raw), Opened(*abi.OPEN_OUT.unpack_from(raw, _ENTRY)))


def _pack_created(c: Created, args: Any) -> bytes:
    return _pack_entry(c.entry) + _pack_opened(c.opened, args)


def _dirents(raw: bytes | memoryview, args: Any, plus: bool) -> list[Dirent]:
    out = []
    pos, n = 0, len(raw)
    unpack = abi.DIRENT.unpack_from
    while pos < n:
        entry = None
        if plus:
            entry = _entry(raw, pos)
            pos += _ENTRY
            if not entry.nodeid:
                entry = None  # ".", "..", or a name without attributes
        ino, off, namelen, dtype = unpack(raw, pos)
        name = bytes(raw[pos + abi.NAME_OFFSET : pos + abi.NAME_OFFSET + namelen])
        out.append(Dirent(ino, off, dtype, name, entry))
        pos += (abi.NAME_OFFSET + namelen + abi.DIRENT_ALIGN - 1) & ~(abi.DIRENT_ALIGN - 1)
    return out


_NO_ENTRY = encode.negative_entry((0, 0))


def _pack_dirents(entries: list[Dirent], args: Any, plus: bool) -> bytes:
    """Entries that no longer fit the kernel's buffer (a filter made them longer) are left out, and
    removed from `entries` so that their lookups are forgotten; the kernel asks again from the last
    entry sent."""
    out = []
    used = 0
    for d in entries:
        rec = encode.dirent(d.ino, d.off, d.type, d.name)
        if plus:
            rec = (_pack_entry(d.entry) if d.entry is not None else _NO_ENTRY) + rec
        if used + len(rec) > args.size:
            break
        out.append(rec)
        used += len(rec)
    del entries[len(out) :]
    return b"".join(out)


def _sized(decode: Callable[[bytes], Any]) -> Callable[[bytes | memoryview, Any], Any]:
    """GETXATTR/LISTXATTR answer only the length when asked with size 0."""

    def decode_sized(raw: bytes | memoryview, args: Any) -> Any:
        return abi.GETXATTR_OUT.unpack(raw)[0] if args.size == 0 else decode(bytes(raw))

    return decode_sized


def _pack_sized(encode_value: Callable[[Any], bytes]) -> Callable[[Any, Any], bytes]:
    def encode_sized(value: Any, args: Any) -> bytes:
        return abi.GETXATTR_OUT.pack(value) if args.size == 0 else encode_value(value)

    return encode_sized


def _pack_statfs(s: Statfs, args: Any) -> bytes:
    return abi.STATFS_OUT.pack(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize, 0)


class Codec(NamedTuple):
    decode: Callable[[Any, Any], Any]  # (reply body, args) -> result
    encode: Callable[[Any, Any], Any]  # (result, args) -> reply body
    counted: Callable[[Any], list[int]] = lambda result: []  # nodeids whose lookup the result carries


def _bytes(raw: bytes | memoryview, args: Any) -> bytes:
    return bytes(raw)


def _data(value: Any, args: Any = None) -> bytes:
    """A filter's bytes-like result as the reply body (anything else would reach the device write)."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"a bytes result was expected, not {type(value).__name__}")
    return bytes(value)


def _read(value: Any, args: Any) -> bytes:
    data = _data(value)
    if len(data) > args.size:
        raise ValueError(f"a READ of {args.size} bytes answered with {len(data)}")
    return data


_NONE = Codec(lambda raw, args: None, lambda result, args: None)
_BYTES = Codec(_bytes, _data)
_ENTRY_CODEC = Codec(lambda raw, args: _entry(raw), lambda e, args: _pack_entry(e),
                     lambda e: [e.nodeid] if e.nodeid else [])  # fmt: skip


def _struct_int(s: Any) -> Codec:
    return Codec(lambda raw, args: s.unpack(raw)[0], lambda n, args: s.pack(n))


def _dirent_codec(plus: bool) -> Codec:
    return Codec(lambda raw, args: _dirents(raw, args, plus), lambda entries, args: _pack_dirents(entries, args, plus),
                 lambda entries: [d.entry.nodeid for d in entries if d.entry is not None])  # fmt: skip


CODECS: dict[int, Codec] = {
    O.LOOKUP: _ENTRY_CODEC,
    O.MKNOD: _ENTRY_CODEC,
    O.MKDIR: _ENTRY_CODEC,
    O.SYMLINK: _ENTRY_CODEC,
    O.LINK: _ENTRY_CODEC,
    O.GETATTR: Codec(_attr_reply, _pack_attr_reply),
    O.SETATTR: Codec(_attr_reply, _pack_attr_reply),
    O.OPEN: Codec(_opened, _pack_opened),
    O.OPENDIR: Codec(_opened, _pack_opened),
    O.CREATE: Codec(_created, _pack_created, lambda c: [c.entry.nodeid]),
    O.TMPFILE: Codec(_created, _pack_created, lambda c: [c.entry.nodeid]),
    O.READ: Codec(_bytes, _read),
    O.READLINK: _BYTES,
    O.STATX: _BYTES,
    O.WRITE: _struct_int(abi.WRITE_OUT),
    O.COPY_FILE_RANGE: _struct_int(abi.WRITE_OUT),
    O.COPY_FILE_RANGE_64: _struct_int(abi.COPY_FILE_RANGE_OUT),
    O.LSEEK: _struct_int(abi.LSEEK_OUT),
    O.GETXATTR: Codec(_sized(lambda raw: raw), _pack_sized(_data)),
    O.LISTXATTR: Codec(_sized(lambda raw: raw.split(b"\0")[:-1]), _pack_sized(lambda names: b"\0".join([*names, b""]))),
    O.READDIR: _dirent_codec(False),
    O.READDIRPLUS: _dirent_codec(True),
    O.STATFS: Codec(lambda raw, args: Statfs(*abi.STATFS_OUT.unpack(raw)[:8]), _pack_statfs),
}


def codec(op: int) -> Codec:
    """How results of `op` travel; operations without a reply body have None."""
    return CODECS.get(op, _NONE)


# Opens a result holds, to be released if the reply never reaches the kernel.
OPENS = {O.OPEN: O.RELEASE, O.OPENDIR: O.RELEASEDIR, O.CREATE: O.RELEASE, O.TMPFILE: O.RELEASE}


def fh_of(result: Any) -> int:
    return result.opened.fh if isinstance(result, Created) else result.fh
