"""The filter contract: fuse-bpf's pre- and post-filters, as plain Python classes.

A filter is a class with optional methods named after operations (the
protocol's names, lower case: `lookup`, `getattr`, `open`, `read`, `write`,
`readdir`, `rename`, `setxattr`, ...):

    pre_<op>(ctx, args) -> CONTINUE | POSTFILTER | USER | None
        Runs before the backing call.  It may change `args` (typed, mutable:
        `args.flags`, `args.name`, `args.offset`, `args.size`, `args.data`; the
        names are the operation's parameter names), then decides: CONTINUE
        (or None) to the backing; POSTFILTER to the backing and then this
        filter's `post_<op>`; USER to answer with its own `user_<op>`; or
        raises OSError(errno) to fail the request with that errno.
    post_<op>(ctx, args, result) -> result | None
        Runs after the backing call with the inputs (read-only from then on)
        and the typed result; returns a replacement result, or None after
        changing `result` in place (or leaving it).  It may raise OSError.
    user_<op>(ctx, args) -> result
        The answer when `pre_<op>` returned USER, in the same typed form.

A filter with `post_<op>` and no `pre_<op>` post-filters every such request.
Plain `pre(ctx, args)` and `post(ctx, args, result)` methods serve every
operation the class has no `pre_<op>`/`post_<op>` for (`ctx.op` says which).
A post-filter runs only for requests that succeeded, unless its class sets
`sees_errors = True`: it then also runs for failures with `result` None and
`ctx.error` set, and may answer with a result instead, or raise another errno.

Three operations come in two protocol forms; a method for the first serves
both unless the class names the second as well: `rename` (also `rename2`,
whose args add `flags`), `copy_file_range` (also `copy_file_range_64`) and
`readdir` (also `readdirplus`, whose entries carry `entry`).

Filters stack in the order given: the first wraps the second, which wraps
the backing.  Pre-filters run first to last, post-filters last to first.

Any exception other than OSError inside a filter answers the request with
EIO and is logged once per filter and operation; the worker serves on.

Results, by operation:
    lookup, mknod, mkdir, symlink, link     Entry
    getattr, setattr                        AttrReply
    open, opendir                           Opened
    create, tmpfile                         Created
    read, readlink                          bytes
    write, copy_file_range, lseek           int (bytes written / copied, the new offset)
    getxattr                                bytes, or int (the size) when args.size is 0
    listxattr                               list[bytes], or int (the size) when args.size is 0
    readdir, readdirplus                    list[Dirent]
    statfs                                  Statfs
    statx                                   bytes (struct fuse_statx_out)
    every other operation                   None

A post-filter may drop or change directory entries (keeping each one's `off`
cookie: the kernel continues a listing from the last one it got) and
attributes, and may shorten a read, but it cannot invent nodeids or file
handles: only the backing makes those.  A USER answer for an operation that
returns them (lookup, open, create...) can therefore only fail, or give a
negative Entry (nodeid 0).

This module is what a filter imports: it depends on nothing but the
standard library.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class Decision(enum.Enum):
    CONTINUE = "continue"  # on to the backing; no post-filter
    POSTFILTER = "postfilter"  # on to the backing, then this filter's post_<op>
    USER = "user"  # this filter's user_<op> answers


CONTINUE = Decision.CONTINUE
POSTFILTER = Decision.POSTFILTER
USER = Decision.USER


class Where(Protocol):
    """How a Context finds paths and attributes; the server provides it."""

    def path(self, nodeid: int) -> str: ...

    def stat(self, nodeid: int) -> os.stat_result: ...


class Context:
    """Who asks, about what.  `path` and `stat()` are computed only when asked for.

    `path` is relative to the backing root ("." for the root itself), joined
    with the entry name for operations that name one (lookup, create, mkdir,
    unlink, rename's old name, link's new name...).  It is read from the
    kernel for looking at, never used to serve.  `error` is the errno a
    post-filter with `sees_errors` is shown (0 on success); `start_ns` is
    when the request reached the filters (time.perf_counter_ns()).
    """

    __slots__ = ("_name", "_path", "_paths", "_where", "error", "gid", "nodeid", "op", "pid", "start_ns", "uid")

    def __init__(self, op: str, uid: int, gid: int, pid: int, nodeid: int, name: bytes | None = None,
                 where: Where | None = None):  # fmt: skip
        self.op = op
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.nodeid = nodeid
        self.error = 0
        self.start_ns = time.perf_counter_ns()
        self._name = name
        self._where = where
        self._path: str | None = None
        self._paths: dict[int, str] = {}  # nodeid -> path, read once per request (a listing asks for each entry)

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = self.path_of(self.nodeid, self._name)
        return self._path

    def path_of(self, nodeid: int, name: bytes | None = None) -> str:
        """The path of another inode of the request (rename's `args.newdir`, say), joined with `name`."""
        base = self._paths.get(nodeid)
        if base is None:
            if self._where is None:
                raise LookupError("this context has no server behind it")
            base = self._paths[nodeid] = self._where.path(nodeid)
        if name is None:
            return base
        return os.fsdecode(name) if base == "." else f"{base}/{os.fsdecode(name)}"

    def stat(self, nodeid: int | None = None) -> os.stat_result:
        """The backing's attributes of the request's inode (or `nodeid`), now."""
        if self._where is None:
            raise LookupError("this context has no server behind it")
        return self._where.stat(self.nodeid if nodeid is None else nodeid)

    def __repr__(self) -> str:
        return f"Context({self.op} node={self.nodeid} uid={self.uid} gid={self.gid} pid={self.pid})"


class Args:
    """An operation's inputs by name; read-only once the backing call is made.

    One subclass per operation is generated from the operation's handler
    signature (`fastpass.filters.stack`), so `_fields` are exactly what the
    handler receives, in its order, each a property over one list (a list
    is the cheapest thing to build per request and to hand back as a tuple).
    """

    __slots__ = ("_frozen", "_values")
    _fields: ClassVar[tuple[str, ...]] = ()
    _views: ClassVar[tuple[int, ...]] = ()  # memoryview fields, made read-only by freeze()

    def __init__(self, *values: Any):
        if len(values) != len(self._fields):
            raise TypeError(f"{type(self).__name__} takes {len(self._fields)} values, not {len(values)}")
        self._values = list(values)
        self._frozen = False

    @staticmethod
    def field(index: int, name: str) -> property:
        """The property for field `name`, the index-th value."""

        def get(self: Args) -> Any:
            return self._values[index]

        def set_(self: Args, value: Any) -> None:
            if self._frozen:
                raise AttributeError(f"{type(self).__name__}.{name} is read-only after the backing call")
            self._values[index] = value

        return property(get, set_, doc=name)

    def freeze(self) -> None:
        """From now on the inputs are what the backing was given; a WRITE payload becomes a read-only view."""
        values = self._values
        for i in self._views:
            if isinstance(values[i], memoryview):
                values[i] = values[i].toreadonly()
        self._frozen = True

    def values(self) -> tuple:
        return tuple(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={v!r}' for n, v in zip(self._fields, self._values))})"


# --- results: the reply structs of fastpass.kernel.abi as typed values, fields in struct order ---------


@dataclass(slots=True)
class Attr:
    """struct fuse_attr; times split into seconds and nanoseconds as the kernel has them."""

    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int


@dataclass(slots=True)
class Entry:
    """struct fuse_entry_out; nodeid 0 is a negative entry (the name does not exist, cached entry_valid)."""

    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


@dataclass(slots=True)
class AttrReply:
    """struct fuse_attr_out."""

    attr_valid: int
    attr_valid_nsec: int
    attr: Attr


@dataclass(slots=True)
class Opened:
    """struct fuse_open_out: the server's file handle and how the kernel is to use it."""

    fh: int
    open_flags: int
    backing_id: int


@dataclass(slots=True)
class Created:
    """CREATE and TMPFILE answer an entry and an open file together."""

    entry: Entry
    opened: Opened


@dataclass(slots=True)
class Dirent:
    """One directory entry; `off` is the cookie of the next one.  READDIRPLUS adds `entry`
    (None for "." and "..", and for a name that vanished meanwhile)."""

    ino: int
    off: int
    type: int
    name: bytes
    entry: Entry | None = field(default=None)


@dataclass(slots=True)
class Statfs:
    """struct fuse_kstatfs."""

    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


class Filter:
    """Base class of filters (not required: any class with the methods above will do).

    The server reads from the class which operations a filter touches and
    wraps only those.  An instance is made once, in the supervisor, before
    the workers fork: `__init__` may set up shared memory or open files the
    workers then share (threads do not survive the fork).  Arguments from
    the command line (`--filter MODULE:CLASS:ARG=VALUE,...`) arrive as
    keyword arguments, each a string, or a list of strings for an argument
    given more than once.
    """

    sees_errors: ClassVar[bool] = False

    def needs_data(self, ctx: Context, flags: int) -> bool:
        """Whether this filter needs the reads and writes of the file just opened with `flags`.

        Consulted at open only for filters with read or write hooks.  Every
        read and write of an open some filter says yes to reaches the filters:
        neither the page cache nor kernel passthrough serves them.  Narrow it
        to keep the other files fast.
        """
        return True

    def flush(self) -> None:
        """Called by each worker when it is idle and when it exits (write out buffers)."""
