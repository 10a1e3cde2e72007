"""The filter stack: wraps the dispatch routes of the operations some filter touches.

Facts that shape it:

* Which operations a filter touches is read from its class once, when a
  worker starts (`install`): only those routes get a wrapped handler, every
  other route keeps the bare one, so an unfiltered operation costs exactly
  what it costs without filters.
* A wrapped handler builds a Context and an Args object (one class per
  operation, generated from the handler's own signature, so the names are
  the handler's parameter names), runs the pre-filters in order, calls the
  handler with the possibly changed arguments, and encodes back what the
  post-filters return.  Replies are decoded only when a post-filter or a
  USER answer needs a typed result (`fastpass.filters.results`).
* A lookup the backing counted must reach the kernel or be forgotten: a
  post-filter that drops READDIRPLUS entries, or fails a LOOKUP or CREATE
  that the backing answered, leaves lookups (and for CREATE an open file)
  the kernel will never release, so the stack forgets and releases them.
* READ and WRITE hooks need the file's data to come to userspace: at open,
  `Fs.filter_data` (set here) asks those filters' `needs_data`, and
  `fastpass.fs.data` then keeps the open out of kernel passthrough.
* A filter raising anything but OSError is a bug: FilterError carries the
  filter's name (`origin`) to the worker, which answers EIO and logs once
  per (operation, filter).
"""

from __future__ import annotations

import collections
import errno
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from fastpass.filters import results
from fastpass.filters.api import CONTINUE, POSTFILTER, USER, Args, Context
from fastpass.fs.context import FilterNeeds, Fs, Request
from fastpass.fs.table import HANDLERS, Handler, Route
from fastpass.kernel.abi import Opcode as O
from fastpass.kernel.opcodes import SPECS

# Protocol housekeeping: no reply, or nothing a filter could change.
UNFILTERED = frozenset({O.FORGET, O.BATCH_FORGET, O.INTERRUPT, O.NOTIFY_REPLY, O.DESTROY})
# A hook for the first serves the second too, unless the class names the second itself.
ALIASES = {O.RENAME2: O.RENAME, O.COPY_FILE_RANGE_64: O.COPY_FILE_RANGE, O.READDIRPLUS: O.READDIR}
# The argument that names a directory entry, joined onto the nodeid's path for Context.path.
ENTRY_NAME = {
    O.LOOKUP: "name", O.SYMLINK: "name", O.MKNOD: "name", O.MKDIR: "name", O.UNLINK: "name", O.RMDIR: "name",
    O.CREATE: "name", O.RENAME: "old", O.RENAME2: "old", O.LINK: "newname",
}  # fmt: skip
DATA = frozenset({O.READ, O.WRITE})
_REFILL = frozenset({O.READDIR, O.READDIRPLUS})


def _name(op: int) -> str:
    return SPECS[op].name.lower()


def _args_class(op: int, handler: Handler) -> type[Args]:
    """The typed argument class of one operation: the handler's parameters after (fs, req)."""
    params = list(inspect.signature(handler).parameters.values())[2:]
    names = tuple(p.name for p in params)
    title = "".join(part.title() for part in _name(op).split("_"))
    return type(f"{title}Args", (Args,), {
        "__slots__": (), "_fields": names, "__module__": __name__,
        "_views": tuple(i for i, p in enumerate(params) if p.annotation == "memoryview"),
        "__annotations__": {p.name: p.annotation for p in params},
        **{name: Args.field(i, name) for i, name in enumerate(names)},
    })  # fmt: skip


ARGS: dict[int, type[Args]] = {op: _args_class(op, h) for op, h in HANDLERS.items()
                               if h is not None and op not in UNFILTERED}  # fmt: skip
OPS: dict[str, int] = {_name(op): op for op in ARGS}


class FilterError(Exception):
    """A filter failed with something other than OSError; the caller gets EIO."""

    def __init__(self, origin: str, where: str):
        super().__init__(f"filter {origin} failed in {where}")
        self.origin = origin


def label(f: object) -> str:
    return type(f).__qualname__


def _method(f: object, kind: str, op: int) -> Callable | None:
    """`<kind>_<op>`, else the hook for the operation's first form, else a plain `pre`/`post` (every operation)."""
    names = [f"{kind}_{_name(op)}"]
    if op in ALIASES:
        names.append(f"{kind}_{_name(ALIASES[op])}")
    if kind != "user":
        names.append(kind)
    for name in names:
        if callable(getattr(type(f), name, None)):
            return getattr(f, name)
    return None


def touched(f: object) -> set[int]:
    """The opcodes a filter has any hook for."""
    return {op for op in ARGS if any(_method(f, kind, op) for kind in ("pre", "post", "user"))}


def problems(cls: type) -> list[str]:
    """What is wrong with a filter class's hooks (a misspelt operation would silently do nothing)."""
    found = []
    for attr in dir(cls):
        kind, _, op = attr.partition("_")
        if kind in ("pre", "post", "user") and op and not op.startswith("_") and callable(getattr(cls, attr)):
            if op not in OPS:
                found.append(f"{attr}: no operation {op!r} can be filtered (known: {', '.join(sorted(OPS))})")
            elif kind == "user" and not callable(getattr(cls, f"pre_{op}", None)):
                found.append(f"{attr} is used only when pre_{op} returns USER, and there is no pre_{op}")
    return found


class Hooks(NamedTuple):
    """One filter's hooks for one operation."""

    name: str
    pre: Callable | None
    post: Callable | None
    user: Callable | None
    sees_errors: bool
    default: object  # the decision when there is no pre-filter


def _call(origin: str, method: Callable, *args: Any) -> Any:
    """A filter's method; anything but OSError becomes FilterError."""
    try:
        return method(*args)
    except OSError:
        raise
    except Exception as e:
        raise FilterError(origin, getattr(method, "__name__", repr(method))) from e


class _Where:
    """Paths and attributes for a Context, from the serving worker's inode fds (for looking only)."""

    __slots__ = ("fs",)

    def __init__(self, fs: Fs):
        self.fs = fs

    def path(self, nodeid: int) -> str:
        return self.fs.path_of(nodeid)

    def stat(self, nodeid: int) -> os.stat_result:
        return os.fstat(self.fs.inode_fd(nodeid))


_NOTHING = object()
log = logging.getLogger("fastpass.filters")


def _wrap(op: int, handler: Handler, chain: list[Hooks]) -> Handler:
    """The handler of one filtered operation."""
    name = _name(op)
    args_class = ARGS[op]
    codec = results.codec(op)
    named = args_class._fields.index(ENTRY_NAME[op]) if op in ENTRY_NAME else -1
    release = HANDLERS[results.OPENS[op]] if op in results.OPENS else None
    refill = args_class._fields.index("offset") if op in _REFILL else -1

    def run(fs: Fs, req: Request, values: tuple) -> tuple[Any, Any]:
        """(reply body, the backing's decoded result if a post-filter saw it)."""
        ctx = Context(name, req.uid, req.gid, req.pid, req.nodeid, values[named] if named >= 0 else None, _Where(fs))
        args = args_class(*values)
        posts: list[Hooks] = []
        result = raw = _NOTHING
        error = 0
        answered = ""  # the filter that answered USER
        try:
            for h in chain:
                decision = _call(h.name, h.pre, ctx, args) if h.pre is not None else h.default
                if decision is None or decision is CONTINUE:
                    continue
                if decision is POSTFILTER and h.post is not None:
                    posts.append(h)
                    continue
                if decision is USER and h.user is not None:
                    args.freeze()
                    answered = h.name
                    result = _call(h.name, h.user, ctx, args)
                    break
                raise FilterError(h.name, f"pre_{name}") from TypeError(f"no way to act on {decision!r}")
            else:
                args.freeze()
                raw = handler(fs, req, *args.values())
        except OSError as e:
            if not any(h.sees_errors for h in posts):
                raise
            error = e.errno or errno.EIO
        if not posts:
            return (raw if result is _NOTHING else _call(answered, codec.encode, result, args)), None
        backing = None
        if raw is not _NOTHING:
            result = backing = codec.decode(raw, args)
        counted = codec.counted(backing) if backing is not None else []
        try:
            for h in reversed(posts):
                if error and not h.sees_errors:
                    continue
                ctx.error = error
                try:
                    new = _call(h.name, h.post, ctx, args, None if error else result)
                except OSError as e:
                    error, result = e.errno or errno.EIO, None
                    continue
                if new is not None:
                    result, error = new, 0
            if error:
                raise OSError(error, os.strerror(error))
            body = _call(posts[0].name, codec.encode, result, args)  # the last to set the result
        except BaseException:
            _undo(fs, req, counted, backing if release is not None else None)
            raise
        if counted:
            _undo(fs, req, list((collections.Counter(counted) - collections.Counter(codec.counted(result))).elements()),
                  None)  # fmt: skip
        return body, backing

    def _undo(fs: Fs, req: Request, lookups: list[int], opened: Any) -> None:
        """Forget lookups and release an open the kernel will never hear of."""
        for nodeid in lookups:
            fs.inodes.forget(nodeid, 1)
        if opened is not None and release is not None:
            release(fs, req, results.fh_of(opened), 0, 0, 0)

    def filtered(fs: Fs, req: Request, *values: Any) -> Any:
        body, backing = run(fs, req, values)
        # A post-filter that dropped every entry of a READDIR batch must not end the listing.
        while refill >= 0 and not body and backing:
            values = (*values[:refill], backing[-1].off, *values[refill + 1 :])
            body, backing = run(fs, req, values)
        return body

    filtered.__qualname__ = f"filtered_{name}"
    return filtered


def hooks(f: object, op: int) -> Hooks | None:
    pre, post, user = (_method(f, kind, op) for kind in ("pre", "post", "user"))
    if pre is None and post is None:
        return None
    default = POSTFILTER if pre is None else CONTINUE
    return Hooks(label(f), pre, post, user, bool(getattr(f, "sees_errors", False)), default)


def install(routes: list[Route | None], filters: list[object]) -> tuple[list[Route | None], FilterNeeds]:
    """Routes with the touched operations wrapped, and what the filters need of `Fs` besides."""
    if not filters:
        return routes, FilterNeeds()
    out = list(routes)
    flush = lookup = False
    for op, route in enumerate(routes):
        if route is None or route.handler is None or op not in ARGS:
            continue
        chain = [h for h in (hooks(f, op) for f in filters) if h is not None]
        if chain:
            # A filtered op runs its wrapped handler inline, never in halves on the ring.
            out[op] = route._replace(handler=_wrap(op, route.handler, chain), submit=None, done=None)
            flush |= op == O.FLUSH
            lookup |= op == O.LOOKUP
    data = [f for f in filters if touched(f) & DATA]
    needs_data = None
    if data:

        def needs_data(fs: Fs, req: Request, nodeid: int, flags: int) -> bool:
            ctx = Context(_name(req.opcode), req.uid, req.gid, req.pid, nodeid, None, _Where(fs))
            return any(_call(label(f), f.needs_data, ctx, flags) for f in data)

    return out, FilterNeeds(needs_data, flush, lookup)


def flush(filters: list[object], failed: set[str]) -> None:
    """Each filter's `flush`, if it has one; called by a worker when idle and at exit.

    It may run from a signal handler between requests, so nothing escapes; a
    failing filter is logged the first time (`failed` holds who was).
    """
    for f in filters:
        method = getattr(f, "flush", None)
        if method is None:
            continue
        try:
            method()
        except Exception:
            if label(f) not in failed:
                failed.add(label(f))
                log.exception("filter %s failed to flush", label(f))
