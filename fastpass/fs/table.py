"""The handler table: opcode -> operation, with the deliberate ENOSYS rows written out.

`build()` joins it with the protocol table once at start-up into a list
indexed by opcode, so dispatch on the hot path is one index and one call.
`AS_CALLER` lists the operations whose outcome depends on who asks (they
check permissions or create files); with allow_other they run with the
caller's credentials, everything else runs on an fh or inode the kernel
has already authorised.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from fastpass.fs import attrs, data, dirs, misc, namespace, xattr
from fastpass.kernel.abi import Opcode as O
from fastpass.kernel.opcodes import SPECS, Decoder, decoder

if TYPE_CHECKING:
    from fastpass.fs.context import Credentials, Fs, Request

log = logging.getLogger("fastpass")

Handler = Callable[..., object]

HANDLERS: dict[int, Handler | None] = {
    O.LOOKUP: namespace.lookup,
    O.FORGET: namespace.forget,
    O.BATCH_FORGET: namespace.batch_forget,
    O.GETATTR: attrs.getattr_,
    O.SETATTR: attrs.setattr_,
    O.STATX: attrs.statx,
    O.ACCESS: attrs.access,
    O.READLINK: namespace.readlink,
    O.SYMLINK: namespace.symlink,
    O.MKNOD: namespace.mknod,
    O.MKDIR: namespace.mkdir,
    O.UNLINK: namespace.unlink,
    O.RMDIR: namespace.rmdir,
    O.RENAME: namespace.rename,
    O.RENAME2: namespace.rename2,
    O.LINK: namespace.link,
    O.OPEN: data.open_,
    O.CREATE: data.create,
    O.TMPFILE: data.tmpfile,
    O.READ: data.read,
    O.WRITE: data.write,
    O.FLUSH: data.flush,
    O.RELEASE: data.release,
    O.FSYNC: data.fsync,
    O.FALLOCATE: data.fallocate,
    O.LSEEK: data.lseek,
    O.COPY_FILE_RANGE: data.copy_file_range,
    O.COPY_FILE_RANGE_64: data.copy_file_range_64,
    O.OPENDIR: dirs.opendir,
    O.READDIR: dirs.readdir,
    O.READDIRPLUS: dirs.readdirplus,
    O.RELEASEDIR: dirs.releasedir,
    O.FSYNCDIR: dirs.fsyncdir,
    O.SETXATTR: xattr.setxattr,
    O.GETXATTR: xattr.getxattr,
    O.LISTXATTR: xattr.listxattr,
    O.REMOVEXATTR: xattr.removexattr,
    O.STATFS: misc.statfs,
    O.SYNCFS: misc.syncfs,
    O.INTERRUPT: misc.interrupt,
    O.NOTIFY_REPLY: misc.notify_reply,
    O.DESTROY: misc.destroy,
    # Locks stay in the kernel (POSIX_LOCKS/FLOCK_LOCKS are not negotiated, so
    # these are never sent); the rest has no passthrough meaning.
    O.GETLK: None,
    O.SETLK: None,
    O.SETLKW: None,
    O.BMAP: None,
    O.IOCTL: None,
    O.POLL: None,
    O.SETUPMAPPING: None,
    O.REMOVEMAPPING: None,
    O.INIT: None,  # answered by the supervisor before any worker starts
}

# The ops whose backing calls may block, as (submit, done, batch): on the ring path their
# backing calls go to the worker's io_uring (fastpass.fs.data, fastpass.fs.dirs).  `submit`
# prepares the calls; `done` makes the reply from what they returned: the one call's result
# (a negative one is the errno reply, made by the worker), or for a batch the list of every
# call's result, in order, errors included.  A submit that needs no call (the page cache had
# the data, the entries were all known) returns the reply itself and the worker answers at once.
RING: dict[int, tuple[Handler, Handler, bool]] = {
    O.READ: (data.read_submit, data.read_rest_done, False),
    O.WRITE: (data.write_submit, data.write_done, False),
    O.FSYNC: (data.fsync_submit, data.fsync_done, False),
    O.FALLOCATE: (data.fallocate_submit, data.fallocate_done, False),
    O.READDIRPLUS: (dirs.readdirplus_submit, dirs.readdirplus_done, True),
}

AS_CALLER = frozenset({
    O.LOOKUP, O.SETATTR, O.ACCESS, O.READLINK, O.SYMLINK, O.MKNOD, O.MKDIR, O.UNLINK, O.RMDIR,
    O.RENAME, O.RENAME2, O.LINK, O.OPEN, O.CREATE, O.TMPFILE, O.OPENDIR, O.READDIRPLUS,
    O.SETXATTR, O.GETXATTR, O.LISTXATTR, O.REMOVEXATTR,
})  # fmt: skip

# The ops that must not take effect twice: they change the backing, or hand the kernel a
# handle or give one back.  A worker records each one's start and reply in its journal
# (fastpass.shm.journal), so a replacement answers what a dead worker left without doing it
# again (or, where the record says it started, redoes it with fastpass.fs.redo).  LOOKUP,
# OPEN and OPENDIR are here for their reply: a replay sends the recorded one instead of
# taking another lookup count or handle that the kernel would never give back.
EFFECTS = frozenset({
    O.LOOKUP, O.FORGET, O.BATCH_FORGET, O.SETATTR, O.SYMLINK, O.MKNOD, O.MKDIR, O.UNLINK, O.RMDIR,
    O.RENAME, O.RENAME2, O.LINK, O.OPEN, O.CREATE, O.TMPFILE, O.WRITE, O.RELEASE, O.FALLOCATE,
    O.COPY_FILE_RANGE, O.COPY_FILE_RANGE_64, O.OPENDIR, O.RELEASEDIR, O.SETXATTR, O.REMOVEXATTR,
})  # fmt: skip


class Route(NamedTuple):
    name: str
    decode: Decoder
    handler: Handler | None
    reply: bool
    as_caller: bool
    submit: Handler | None  # the ring path's halves (RING), None for the ops always served inline
    done: Handler | None
    batch: bool
    effect: bool  # in EFFECTS: journaled


def build() -> list[Route | None]:
    """Dispatch list indexed by opcode; None where the opcode is unknown."""
    routes: list[Route | None] = [None] * (max(SPECS) + 1)
    for op, spec in SPECS.items():
        submit, done, batch = RING.get(op, (None, None, False))
        routes[op] = Route(spec.name, decoder(spec), HANDLERS[op], spec.reply, op in AS_CALLER, submit, done, batch,
                           op in EFFECTS)  # fmt: skip
    return routes


class Unexpected:
    """The bugs met while serving: each answered EIO and counted, and each kind (opcode, exception
    type, filter) logged once with its traceback, so a bug hit by every request cannot flood the log."""

    def __init__(self) -> None:
        self.count = 0
        self._seen: set[tuple[int, type, object]] = set()

    def __call__(self, name: str, opcode: int, exc: Exception) -> None:
        self.count += 1
        origin = getattr(exc, "origin", None)
        if (opcode, type(exc), origin) not in self._seen:
            self._seen.add((opcode, type(exc), origin))
            log.error("unexpected error in %s, answered EIO", f"{name} (filter {origin})" if origin else name,
                      exc_info=exc)  # fmt: skip


def run_route(fs: Fs, route: Route, req: Request, call: Handler, args: tuple, creds: Credentials | None,
              unexpected: Unexpected) -> tuple[int, object]:  # fmt: skip
    """Run one of `route`'s handlers for `req`: `call` is its handler, a redo of it, its ring
    submit (args: ring, tag, area, then the request's) or its ring done (args: state, result).

    The one way every transport and both engines serve a request, and the one sign convention:
    (0, the reply's body) or (-errno, None).  With `creds` (allow_other) a route that depends on
    who asks runs with the caller's credentials.  Any other exception is a bug: -EIO, told to
    `unexpected`; the server lives on.
    """
    switched = creds is not None and route.as_caller and creds.become(req)
    try:
        return 0, call(fs, req, *args)
    except OSError as e:
        return -(e.errno or errno.EIO), None
    except Exception as e:  # noqa: BLE001 - a bug: EIO for the caller, the server lives on
        unexpected(route.name, req.opcode, e)
        return -errno.EIO, None
    finally:
        if switched:
            creds.restore()  # type: ignore[union-attr]
