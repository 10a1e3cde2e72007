"""The filter layer without a mount: spec parsing, the generated argument classes, the result codecs
(decode then encode gives back the handler's bytes), hook discovery, and the stack's control flow
over a stub handler."""

from __future__ import annotations

import errno
import inspect
import os
from types import SimpleNamespace

import pytest

from fastpass.filters import load, results, stack
from fastpass.filters.api import CONTINUE, POSTFILTER, USER, Args, Attr, Context, Dirent, Filter, Statfs
from fastpass.fs.table import HANDLERS
from fastpass.kernel import abi, encode
from fastpass.kernel.abi import Opcode as O

# --- specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("readonly", ("fastpass.filters.readonly", "ReadOnly", {})),
        ("hide:pattern=*.x", ("fastpass.filters.hide", "Hide", {"pattern": "*.x"})),
        ("hide:pattern=a,pattern=b,pattern=c", ("fastpass.filters.hide", "Hide", {"pattern": ["a", "b", "c"]})),
        ("quota:bytes=10M", ("fastpass.filters.quota", "Quota", {"bytes": "10M"})),
        ("fastpass.filters.hide:Hide:pattern=p=q", ("fastpass.filters.hide", "Hide", {"pattern": "p=q"})),
        ("my.mod:Cls", ("my.mod", "Cls", {})),
        ("my.mod:Cls:a=1,b=", ("my.mod", "Cls", {"a": "1", "b": ""})),
        ("audit:path=x:y", ("fastpass.filters.audit", "Audit", {"path": "x:y"})),
        ("m:C:k=x:y", ("m", "C", {"k": "x:y"})),
    ],
)
def test_parse(spec: str, expected: tuple) -> None:
    assert load.parse(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "mod", ":Cls", "mod:", "mod:1x", "mod:Cls:novalue", "mod:Cls:=v", "mod:Cls:a=1,,b=2"]
)
def test_parse_refuses(spec: str) -> None:
    with pytest.raises(load.SpecError):
        load.parse(spec)


def test_builtins_load_by_short_and_full_name() -> None:
    assert type(load.load("readonly")).__name__ == "ReadOnly"
    assert type(load.load("fastpass.filters.readonly:ReadOnly")).__name__ == "ReadOnly"
    assert load.load("quota:bytes=2K").limit == 2048  # type: ignore[attr-defined]
    assert load.load("quota:bytes=3MiB").limit == 3 << 20  # type: ignore[attr-defined]


class _Typo:
    def pre_lokup(self, ctx, args):
        pass


class _UserOnly:
    def user_getattr(self, ctx, args):
        pass


class _Fine(Filter):
    def pre(self, ctx, args):
        pass

    def post_readdir(self, ctx, args, result):
        pass

    def _pre_helper(self):
        pass


def test_problems() -> None:
    assert "no operation 'lokup'" in stack.problems(_Typo)[0]
    assert "there is no pre_getattr" in stack.problems(_UserOnly)[0]
    assert stack.problems(_Fine) == []
    assert stack.problems(load.load("audit:path=/dev/null").__class__) == []


def test_touched_reads_the_class() -> None:
    fine = _Fine()
    assert stack.touched(fine) == set(stack.ARGS)  # a plain pre() is every operation
    assert stack.touched(Filter()) == set()
    hide = load.load("hide:pattern=x")
    assert {O.READDIR, O.READDIRPLUS, O.RENAME, O.RENAME2, O.LOOKUP} <= stack.touched(hide)
    assert O.GETATTR not in stack.touched(hide) and O.READ not in stack.touched(hide)


def test_unfiltered_routes_keep_the_bare_handler() -> None:
    from fastpass.fs.table import build

    routes = build()
    wrapped, needs = stack.install(routes, [load.load("hide:pattern=x")])
    assert needs.lookup and not needs.flush and needs.data is None  # a missing name is not kept (Fs.absent)
    for op, route in enumerate(routes):
        if route is None:
            continue
        if op in (O.LOOKUP, O.READDIR, O.READDIRPLUS, O.CREATE, O.MKDIR):
            assert wrapped[op].handler is not route.handler
        elif op in (O.GETATTR, O.READ, O.WRITE, O.OPEN, O.FORGET):
            assert wrapped[op] is route


# --- argument classes ----------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(stack.ARGS), ids=lambda o: O(o).name)
def test_args_classes_follow_the_handlers(op: int) -> None:
    params = list(inspect.signature(HANDLERS[op]).parameters)[2:]
    cls = stack.ARGS[op]
    assert cls._fields == tuple(params)
    assert issubclass(cls, Args) and cls.__name__.endswith("Args")
    values = tuple(range(len(params)))
    assert cls(*values).values() == values


def test_args_are_mutable_then_frozen() -> None:
    buf = bytearray(b"payload")
    args = stack.ARGS[O.WRITE](1, 0, 7, 0, 0, os.O_WRONLY, memoryview(buf))
    args.offset = 100
    assert args.values()[1] == 100
    args.freeze()
    with pytest.raises(AttributeError, match="read-only after the backing call"):
        args.offset = 5
    assert args.data.readonly and bytes(args.data) == b"payload"
    with pytest.raises(TypeError):
        args.data[0] = 0
    with pytest.raises(AttributeError):
        stack.ARGS[O.LOOKUP](b"n").nonexistent = 1


# --- result codecs: decode(handler bytes) then encode == the same bytes ---------------------------

ST = os.stat("/")
ENTRY = encode.entry_out(0x1_0000_0005, 1, (1, 2), (3, 4), encode.attr(ST))
OPENED = encode.open_out(77, abi.FopenFlag.PASSTHROUGH, 3)


def _args(op: int, **kw: object) -> Args:
    cls = stack.ARGS[op]
    return cls(*(kw.get(name, 0) for name in cls._fields))


DIRENTS = b"".join(encode.dirent(10 + i, i + 1, 8, name) for i, name in enumerate([b".", b"..", b"a", b"longer-name"]))
PLUS = b"".join([encode.negative_entry((0, 0)) + encode.dirent(1, 1, 4, b"."), ENTRY + encode.dirent(5, 2, 8, b"abc")])

CASES = [
    (O.LOOKUP, ENTRY, {}),
    (O.MKDIR, ENTRY, {}),
    (O.GETATTR, encode.attr_out((1, 5), encode.attr(ST)), {}),
    (O.OPEN, OPENED, {}),
    (O.CREATE, ENTRY + OPENED, {}),
    (O.READ, b"some data", {"size": 4096}),
    (O.WRITE, abi.WRITE_OUT.pack(4096), {}),
    (O.COPY_FILE_RANGE_64, abi.COPY_FILE_RANGE_OUT.pack(1 << 40), {}),
    (O.LSEEK, abi.LSEEK_OUT.pack(12345), {}),
    (O.GETXATTR, b"value", {"size": 100}),
    (O.GETXATTR, abi.GETXATTR_OUT.pack(5), {"size": 0}),
    (O.LISTXATTR, b"user.a\0user.bb\0", {"size": 100}),
    (O.READDIR, DIRENTS, {"size": 4096}),
    (O.READDIRPLUS, PLUS, {"size": 4096}),
    (O.STATFS, encode.statfs_out(os.statvfs("/")), {}),
]


@pytest.mark.parametrize(("op", "raw", "kw"), CASES, ids=lambda v: O(v).name if isinstance(v, int) else "")
def test_codec_round_trip(op: int, raw: bytes, kw: dict) -> None:
    args = _args(op, **kw)
    c = results.codec(op)
    assert c.encode(c.decode(raw, args), args) == raw


def test_decoded_values() -> None:
    entry = results.codec(O.LOOKUP).decode(ENTRY, None)
    assert (entry.nodeid, entry.attr.ino, entry.attr.mode, entry.attr.size) == (0x1_0000_0005, ST.st_ino, ST.st_mode,
                                                                              ST.st_size)  # fmt: skip
    assert results.codec(O.LOOKUP).counted(entry) == [0x1_0000_0005]
    names = [d.name for d in results.codec(O.READDIR).decode(DIRENTS, None)]
    assert names == [b".", b"..", b"a", b"longer-name"]
    plus = results.codec(O.READDIRPLUS).decode(PLUS, None)
    assert plus[0].entry is None and plus[1].entry.nodeid == 0x1_0000_0005
    assert results.codec(O.READDIRPLUS).counted(plus) == [0x1_0000_0005]
    assert results.codec(O.LISTXATTR).decode(b"user.a\0user.bb\0", _args(O.LISTXATTR, size=99)) == [
        b"user.a",
        b"user.bb",
    ]
    assert isinstance(results.codec(O.STATFS).decode(encode.statfs_out(os.statvfs("/")), None), Statfs)
    assert results.codec(O.UNLINK).decode(None, None) is None


def test_result_classes_match_the_abi_structs() -> None:
    import dataclasses

    fields = len(abi.ATTR.unpack(bytes(abi.ATTR.size)))
    assert len(dataclasses.fields(Attr)) == fields == 16


def test_dirents_that_no_longer_fit_are_left_out() -> None:
    entries = [Dirent(1, 1, 8, b"a" * 100), Dirent(2, 2, 8, b"b")]
    body = results.codec(O.READDIR).encode(entries, _args(O.READDIR, size=130))
    assert len(body) == encode.dirent_size(b"a" * 100, False) and len(entries) == 1


# --- the stack's control flow over a stub handler ------------------------------------------------


class _Fs:
    def __init__(self) -> None:
        self.forgotten: list[int] = []
        self.inodes = SimpleNamespace(forget=lambda nodeid, n: self.forgotten.append(nodeid))

    def path_of(self, nodeid: int) -> str:
        return "." if nodeid == 1 else "dir"


REQ = SimpleNamespace(uid=1, gid=2, pid=3, nodeid=1, opcode=O.GETXATTR)


class _Where:
    def __init__(self) -> None:
        self.asked = 0

    def path(self, nodeid: int) -> str:
        self.asked += 1
        return "." if nodeid == 1 else "dir"

    def stat(self, nodeid: int) -> os.stat_result:
        return os.stat("/")


def _run(op: int, filters: list[object], handler, *values, fs=None):
    chain = [h for h in (stack.hooks(f, op) for f in filters) if h is not None]
    return stack._wrap(op, handler, chain)(fs or _Fs(), REQ, *values)  # type: ignore[arg-type]


class _Trace(Filter):
    def __init__(self, tag: str, log: list, decision=CONTINUE, sees_errors=False):
        self.tag, self.log, self.decision, self.sees_errors = tag, log, decision, sees_errors

    def pre_getxattr(self, ctx, args):
        self.log.append(f"pre {self.tag}")
        if isinstance(self.decision, OSError):
            raise self.decision
        return self.decision

    def post_getxattr(self, ctx, args, result):
        self.log.append(f"post {self.tag} {result!r} {ctx.error}")

    def user_getxattr(self, ctx, args):
        self.log.append(f"user {self.tag}")
        return b"user-" + self.tag.encode()


def test_order_and_decisions() -> None:
    log: list = []
    body = _run(O.GETXATTR, [_Trace("a", log, POSTFILTER), _Trace("b", log), _Trace("c", log, POSTFILTER)],
                lambda fs, req, size, name: b"backing", 100, b"user.x")  # fmt: skip
    assert body == b"backing"
    assert log == ["pre a", "pre b", "pre c", "post c b'backing' 0", "post a b'backing' 0"]
    log.clear()
    body = _run(O.GETXATTR, [_Trace("a", log, POSTFILTER), _Trace("b", log, USER), _Trace("c", log)],
                lambda *a: pytest.fail("the backing was called"), 100, b"user.x")  # fmt: skip
    assert body == b"user-b" and log == ["pre a", "pre b", "user b", "post a b'user-b' 0"]


def test_errors_reach_only_post_filters_that_see_them() -> None:
    log: list = []
    denied = OSError(errno.EPERM, "no")
    with pytest.raises(OSError) as e:
        _run(O.GETXATTR, [_Trace("a", log, POSTFILTER, sees_errors=True), _Trace("b", log, POSTFILTER),
                          _Trace("c", log, denied)], lambda *a: b"", 100, b"user.x")  # fmt: skip
    assert e.value.errno == errno.EPERM
    assert log == ["pre a", "pre b", "pre c", "post a None 1"]


def test_a_post_filter_may_answer_a_failure() -> None:
    class Rescue(Filter):
        sees_errors = True

        def post_getxattr(self, ctx, args, result):
            return b"rescued" if ctx.error == errno.ENODATA else None

    def missing(*a):
        raise OSError(errno.ENODATA, "no attr")

    assert _run(O.GETXATTR, [Rescue()], missing, 100, b"user.x") == b"rescued"


def test_a_bad_decision_or_exception_is_a_filter_error() -> None:
    class Bad(Filter):
        def pre_getxattr(self, ctx, args):
            return True

    class Raises(Filter):
        def post_getxattr(self, ctx, args, result):
            raise KeyError("x")

    class WrongType(Filter):
        def pre_getxattr(self, ctx, args):
            return USER

        def user_getxattr(self, ctx, args):
            return 42  # not bytes: must not reach the device write

    for f in (Bad(), Raises(), WrongType()):
        with pytest.raises(stack.FilterError) as e:
            _run(O.GETXATTR, [f], lambda *a: b"v", 100, b"user.x")
        assert e.value.origin == type(f).__qualname__


def test_a_read_answer_longer_than_asked_is_a_filter_error() -> None:
    class Longer(Filter):
        def post_read(self, ctx, args, result):
            return result * 2

    with pytest.raises(stack.FilterError):
        _run(O.READ, [Longer()], lambda *a: b"12345", 7, 0, 5, 0, 0, 0)
    assert _run(O.READ, [Longer()], lambda *a: b"12", 7, 0, 5, 0, 0, 0) == b"1212"


def test_dropped_readdirplus_entries_are_forgotten_and_an_emptied_batch_reads_on() -> None:
    class DropX(Filter):
        def post_readdir(self, ctx, args, result):
            return [d for d in result if not d.name.startswith(b"x")]

    def entry(nodeid: int) -> bytes:
        return encode.entry_out(nodeid, 0, (1, 0), (1, 0), encode.attr(ST))

    batches = {
        0: entry(11) + encode.dirent(1, 1, 8, b"x1") + entry(12) + encode.dirent(2, 2, 8, b"x2"),
        2: entry(13) + encode.dirent(3, 3, 8, b"keep") + entry(14) + encode.dirent(4, 4, 8, b"x3"),
    }
    asked: list[int] = []

    def readdirplus(fs, req, fh, offset, size, *rest):
        asked.append(offset)
        return batches.get(offset, b"")

    fs = _Fs()
    body = _run(O.READDIRPLUS, [DropX()], readdirplus, 7, 0, 4096, 0, 0, 0, fs=fs)
    assert asked == [0, 2]
    assert [d.name for d in results.codec(O.READDIRPLUS).decode(body, None)] == [b"keep"]
    assert sorted(fs.forgotten) == [11, 12, 14]


def test_a_failed_entry_reply_forgets_its_lookup() -> None:
    class Refuse(Filter):
        def post_lookup(self, ctx, args, result):
            raise OSError(errno.EACCES, "no")

    fs = _Fs()
    with pytest.raises(OSError):
        _run(O.LOOKUP, [Refuse()], lambda fs, req, name: ENTRY, b"n", fs=fs)
    assert fs.forgotten == [0x1_0000_0005]


def test_context_path_is_lazy() -> None:
    where = _Where()
    ctx = Context("lookup", 0, 0, 1, 5, b"name", where)
    assert where.asked == 0
    assert ctx.path == "dir/name" and ctx.path == "dir/name" and where.asked == 1
    assert ctx.path_of(5, b"other") == "dir/other" and ctx.path_of(5) == "dir" and where.asked == 1
    assert ctx.path_of(1, b"top") == "top" and ctx.path_of(1) == "." and where.asked == 2
    with pytest.raises(LookupError):
        _ = Context("lookup", 0, 0, 1, 5).path
