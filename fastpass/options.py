"""Mount options: the one table behind `fastpass mount`'s long options, its `-o` lists, the
bench's check of `--variant` options, and the option list `stats` shows.

Every fastpass option is both `--name-with-dashes [VALUE]` and `-o name_with_underscores[=VALUE]`;
the ones mount(8) and FUSE define (`ro`, `nosuid`, `fsname=`...) are `-o` only, spelled as
mount(8) spells them, so that an fstab line and `mount -t fuse.fastpass` pass them through
mount.fuse3 unchanged.  Options apply in command-line order and a later one wins, as with
mount(8).  An `-o` list is split at commas; a comma inside a value is written `\\,` (libfuse's
escape).  `x-*` and `X-*` items are mount(8)'s notes for other programs, and `defaults` says
nothing (MOUNT8_ONLY): ignored.  Anything else
unknown or malformed is refused with a line that names it (`OptionError`).

A value not given takes MountConfig's default, except five that follow from others (`config`):
`workers` (one per CPU as root with the native engine, else 1), `io` (uring with the native
engine, plain with pyfuse3), `io_depth` (fewer where RLIMIT_MEMLOCK holds fewer, not as root),
`transport` (auto with the native engine, dev with pyfuse3) and `default_permissions` (on with
`allow_other`); and `passthrough` auto means off with pyfuse3 and with
`writeback_cache`.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from fastpass.config import CACHE_MODES, DEFAULT_IO_DEPTH, ENGINES, IO_PATHS, PASSTHROUGH_MODES, TRANSPORTS, MountConfig
from fastpass.config import problem as rules_problem
from fastpass.kernel.mount import escape, split


class OptionError(Exception):
    """A mount option that cannot be taken; the message names it, in one line."""


def subtype_name(value: str) -> str:
    """A subtype: mountinfo shows it as fuse.NAME, and mount -t fuse.NAME finds the helper by it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", value):
        raise ValueError("a name of letters, digits, '.', '_', '+', '-'")
    return value


def text(value: str) -> str:
    """A value that must not be empty (a path, a filter spec, a source)."""
    if not value:
        raise ValueError("a value")
    return value


@dataclass(frozen=True)
class Option:
    name: str  # -o NAME[=VALUE]; the long option is --NAME with dashes for underscores
    field: str  # the MountConfig field it sets
    help: str
    parse: Callable[[str], Any] | None = None  # reads VALUE (raises ValueError); None: a flag that sets `const`
    const: Any = True
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    short: str | None = None
    long: bool = True  # also a --long option (False: -o only, as mount(8) names it)
    repeat: bool = False  # each use adds one more value (a tuple field)

    def read(self, raw: str) -> Any:
        """VALUE of `-o NAME=VALUE`, or the OptionError that names it."""
        try:
            value = self.parse(raw) if self.parse else None
        except ValueError as e:
            kind = {int: "a whole number", float: "a number"}.get(self.parse, str(e))  # type: ignore[call-overload]
            raise OptionError(f"mount option '{self.name}={raw}': expected {kind}") from None
        if self.choices and value not in self.choices:
            raise OptionError(f"mount option '{self.name}={raw}': choose from {', '.join(self.choices)}")
        return value


_D = {f.name: f.default for f in msgspec.structs.fields(MountConfig)}

OPTIONS: tuple[Option, ...] = (
    Option("workers", "workers", "worker processes (default: one per CPU as root, 1 otherwise)", int, metavar="N",
           short="-w"),
    Option("max_workers", "max_workers", "the most workers `fastpass workers` and a live `fastpass tune` may set "
           "while mounted (default: twice the CPUs, at least --workers)", int, metavar="N"),
    Option("engine", "engine", "native: the kernel protocol, a pool of workers; pyfuse3: libfuse in one process "
           f"(needs fastpass[pyfuse3]) (default {_D['engine']})", str, choices=ENGINES),
    Option("passthrough", "passthrough", "kernel passthrough of regular files' data (auto: where the kernel and "
           f"privilege allow) (default {_D['passthrough']})", str, choices=PASSTHROUGH_MODES),
    Option("io", "io", "uring: requests and data I/O on one io_uring per worker, many in flight (plain syscalls "
           "where the kernel refuses io_uring); plain: one blocking request at a time (default: uring with the "
           "native engine, plain with pyfuse3)", str, choices=IO_PATHS),
    Option("io_depth", "io_depth", "with --io uring: requests in flight per worker, 1 MiB of buffer each "
           f"(default {_D['io_depth']}; not as root, fewer if RLIMIT_MEMLOCK holds fewer)", int, metavar="N"),
    Option("transport", "transport", "where requests come from: uring: FUSE-over-io_uring entries on each worker's "
           "ring (Linux 6.14+; as root it turns the fuse module's enable_uring on while the mount starts, as a normal "
           "user it needs it on); auto: uring where the kernel offers it (enable_uring already on), /dev/fuse "
           "otherwise; dev: /dev/fuse (default: auto with the native engine, dev with pyfuse3)", str,
           choices=TRANSPORTS),
    Option("queue_depth", "queue_depth", "with --transport uring: entries per queue (one queue per CPU), 1 MiB of "
           f"resident buffer each (default {_D['queue_depth']})", int, metavar="N"),
    Option("allow_other", "allow_other", "let other users in, each with their own credentials; the kernel checks "
           "mode bits and POSIX ACLs on every path component (--default-permissions) and the backing checks each "
           "operation as its caller"),
    Option("default_permissions", "default_permissions", "the kernel checks mode bits and POSIX ACLs on every path "
           "component, cached ones included (default: on with --allow-other)"),
    Option("no_default_permissions", "default_permissions", "leave the checks to the backing alone; RISK: with "
           "--allow-other a user may then reach files through paths that another user's access left in the "
           "kernel's cache, which the backing would deny them (a 0700 directory's files, once its owner has "
           "opened them)", const=False),
    Option("cache", "cache", "auto: shared attribute cache, outside changes pushed to the kernel; off: no cache in "
           "fastpass, the kernel trusts 1 s; strict: nothing cached anywhere "
           f"(default {_D['cache']})", str, choices=CACHE_MODES),
    Option("cache_size", "cache_size", f"entries of the shared attribute cache (default {_D['cache_size']})", int,
           metavar="N"),
    Option("revalidate", "revalidate", "with --cache auto: ask the backing again after S seconds instead of "
           "watching it for changes (for network filesystems; chosen with S=1 where watching is impossible)", float,
           metavar="S"),
    Option("attr_timeout", "attr_timeout", "kernel attribute cache time (default: set by --cache, see README)",
           float, metavar="S"),
    Option("entry_timeout", "entry_timeout", "kernel name cache time (default: set by --cache, see README)", float,
           metavar="S"),
    Option("writeback_cache", "writeback_cache", "the kernel's writeback cache on the userspace data path: "
           "small writes gather in the page cache; the kernel keeps sizes and mtimes of the files it holds, so an "
           "outside change of a file's size shows once no program has it open; excludes --passthrough on (auto "
           "means off with it) and --filter"),
    Option("max_inodes", "max_inodes", "inodes the kernel may know at once: the inode table's memory cap, 200 bytes "
           "each as used; cold inodes are pruned near it (Linux 6.18) (default 0: no bound)", int, metavar="N"),
    Option("max_inodes_per_user", "max_inodes_per_user", "with --allow-other: the inodes one user's lookups may "
           "bring into the table; past it their lookups of new inodes fail with ENFILE (default: half of "
           "--max-inodes)", int, metavar="N"),
    Option("max_open_per_user", "max_open_per_user", "with --allow-other: files and directories one user may "
           "hold open at once, over all workers; past it their opens fail with EMFILE (default: half of the smaller "
           "of the fd limit and the handle table)", int, metavar="N"),
    Option("filter", "filters", "a filter around the operations, outermost first (repeatable): readonly, "
           "hide:pattern=GLOB, audit:path=FILE, quota:bytes=N, or MODULE:CLASS[:ARG=VALUE,...]", text,
           metavar="SPEC", repeat=True),
    Option("debug", "debug", "log every request and reply"),
    Option("log", "log", "log file (background mode)", text, metavar="FILE"),
    Option("nonempty", "nonempty", "allow a non-empty mountpoint"),
    # mount(8)'s and FUSE's own, -o only.
    Option("ro", "read_only", "read-only: every change fails with EROFS", long=False),
    Option("rw", "read_only", "read-write (default)", const=False, long=False),
    Option("nosuid", "nosuid", "set-user-ID and set-group-ID bits ignored (default)", long=False),
    Option("suid", "nosuid", "set-user-ID bits honoured (root only; mount.fuse3 adds it unless nosuid)", const=False,
           long=False),
    Option("nodev", "nodev", "device files cannot be opened (default)", long=False),
    Option("dev", "nodev", "device files can be opened (root only; mount.fuse3 adds it unless nodev)", const=False,
           long=False),
    Option("noexec", "noexec", "nothing executes from the mount", long=False),
    Option("exec", "noexec", "files may execute (default)", const=False, long=False),
    Option("noatime", "atime", "the kernel updates no access times (mount(8)'s atime options; the backing "
           "keeps its own as it is read)", const="noatime", long=False),
    Option("relatime", "atime", "access times updated when older than the modification (default)",
           const="relatime", long=False),
    Option("atime", "atime", "the kernel's default: relatime", const="relatime", long=False),
    Option("strictatime", "atime", "access times updated on every access", const="strictatime", long=False),
    Option("nodiratime", "nodiratime", "no access times for directories", long=False),
    Option("diratime", "nodiratime", "directories' access times as files' (default)", const=False, long=False),
    Option("lazytime", "lazytime", "times kept in memory, written out lazily", long=False),
    Option("nolazytime", "lazytime", "times written out at once (default)", const=False, long=False),
    Option("sync", "sync", "writes are synchronous (O_SYNC on every open)", long=False),
    Option("async", "sync", "writes are asynchronous (default)", const=False, long=False),
    Option("dirsync", "dirsync", "directory changes are synchronous", long=False),
    Option("fsname", "fsname", "the source mountinfo shows (default: the backing path)", text, metavar="NAME",
           long=False),
    Option("subtype", "subtype", f"the type mountinfo shows is fuse.NAME (default {_D['subtype']})", subtype_name,
           metavar="NAME", long=False),
)
BY_NAME = {o.name: o for o in OPTIONS}
# fstab's `defaults`: the default options, so nothing to fastpass.  mount.fuse3 takes out the other
# options that are mount(8)'s alone (noauto, nofail, _netdev, user...): given here, they are mistakes.
MOUNT8_ONLY = frozenset({"defaults"})


class _Given(argparse.Action):
    """Keeps each mount option (or -o list) in command-line order, so that a later one wins."""

    def __init__(self, *args: Any, option: Option | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.option = option

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        item = ("-o", values) if self.option is None else (self.option.name, self.option.const
                                                            if self.option.parse is None else values)  # fmt: skip
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), item])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`-o` and every long mount option; the parsed options land in `namespace.given` (see `collect`)."""
    parser.set_defaults(given=[])
    shown = [o.name + (f"={o.metavar}" if o.parse else "") for o in OPTIONS if not o.long]
    parser.add_argument("-o", dest="given", action=_Given, metavar="OPT[,OPT...]", default=argparse.SUPPRESS,
                        help="mount options as mount(8) and fstab give them: each long option below as NAME[=VALUE] "
                             f"with '_' for '-', and {', '.join(shown)}; a ',' in a value is written '\\,'")  # fmt: skip
    for o in OPTIONS:
        if not o.long:
            continue
        flags = [*([o.short] if o.short else []), f"--{o.name.replace('_', '-')}"]
        kw: dict[str, Any] = {"nargs": 0} if o.parse is None else {"type": o.parse, "metavar": o.metavar}
        if o.choices:
            kw["choices"] = o.choices
        parser.add_argument(*flags, dest="given", action=_Given, option=o, default=argparse.SUPPRESS, help=o.help,
                            **kw)  # fmt: skip


def parse(listing: str) -> list[tuple[Option, Any]]:
    """The options of one `-o` list, in order."""
    found = []
    for item in split(listing):
        name, eq, raw = item.partition("=")
        if name.startswith(("x-", "X-")) or name in MOUNT8_ONLY:
            continue
        option = BY_NAME.get(name)
        if option is None:
            raise OptionError(f"unknown mount option '{name}'")
        if option.parse is None:
            if eq:
                raise OptionError(f"mount option '{name}' takes no value")
            found.append((option, option.const))
        elif not eq:
            raise OptionError(f"mount option '{name}' needs a value: {name}={option.metavar or option.name.upper()}")
        else:
            found.append((option, option.read(raw)))
    return found


def collect(given: list[tuple[str, Any]]) -> dict[str, Any]:
    """MountConfig fields from the options as given (`add_arguments`), later ones winning."""
    fields: dict[str, Any] = {}
    for name, value in given:
        for option, v in parse(value) if name == "-o" else [(BY_NAME[name], value)]:
            fields[option.field] = (*fields.get(option.field, ()), v) if option.repeat else v
    return fields


def default_workers(engine: str) -> int:
    """One per CPU as root (workers need open_by_handle_at); the pyfuse3 engine is one process."""
    return (os.cpu_count() or 1) if os.geteuid() == 0 and engine == "native" else 1


def default_io_depth(euid: int, memlock: int) -> int:
    """DEFAULT_IO_DEPTH, or for a user without CAP_IPC_LOCK as many 1 MiB buffers as RLIMIT_MEMLOCK
    (soft, `memlock` bytes) lets io_uring register, a MiB left for anything else pinned: the default
    8 MiB of Debian and Ubuntu would otherwise refuse the registration of 8 (said in the log)."""
    if euid == 0 or memlock == resource.RLIM_INFINITY:
        return DEFAULT_IO_DEPTH
    return max(1, min(DEFAULT_IO_DEPTH, memlock // (1 << 20) - 1))


def config(backing: str, mountpoint: str, fields: dict[str, Any]) -> MountConfig:
    """The MountConfig of `fastpass mount BACKING MOUNTPOINT` with these option fields (`collect`)."""
    fields = dict(fields)
    engine = fields.get("engine", _D["engine"])
    fields.setdefault("workers", default_workers(engine))
    fields.setdefault("io", "plain" if engine == "pyfuse3" else "uring")
    fields.setdefault("io_depth", default_io_depth(os.geteuid(), resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]))
    fields.setdefault("transport", "dev" if engine == "pyfuse3" else "auto")
    fields.setdefault("default_permissions", fields.get("allow_other", False))
    if (engine == "pyfuse3" or fields.get("writeback_cache")) and fields.get("passthrough", _D["passthrough"]) == "auto":
        fields["passthrough"] = "off"  # libfuse has no backing ids; the kernel takes no passthrough with writeback
    if fields.get("log"):
        fields["log"] = os.path.realpath(fields["log"])
    return MountConfig(backing=os.path.realpath(backing), mountpoint=os.path.realpath(mountpoint), **fields)


def as_o(args: Sequence[str]) -> str:
    """Long options (`--name value`, `--name=value`, `--flag`) as the `-o` list that says the same,
    as an fstab line takes them."""
    items = []
    rest = iter(args)
    for arg in rest:
        name, eq, raw = arg.removeprefix("--").partition("=")
        option = BY_NAME[name.replace("-", "_")]
        if option.parse is None:
            items.append(option.name)
        else:
            items.append(f"{option.name}={escape(raw if eq else next(rest))}")
    return ",".join(items)


def render(config: MountConfig) -> str:
    """The `-o` list that mounts `config` again: every valued option, and the flags that change a default."""
    items = []
    for o in OPTIONS:
        value = getattr(config, o.field)
        if o.repeat:
            items += [f"{o.name}={escape(v)}" for v in value]
        elif o.parse is None:
            usual = config.allow_other if o.field == "default_permissions" else _D[o.field]
            items += [o.name] if value == o.const != usual else []
        elif value is not None and value != "":
            items.append(f"{o.name}={escape(str(value))}")
    return ",".join(items)


class _Checker(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's refusals, as an exception rather than an exit
        raise OptionError(message)


def problem(args: list[str]) -> str | None:
    """What `fastpass mount` would refuse among these option arguments whatever the system (a bad
    value, options that exclude each other: `fastpass.config.RULES`), found without mounting."""
    checker = _Checker(prog="fastpass mount", add_help=False)
    add_arguments(checker)
    try:
        fields = collect(checker.parse_args(args).given)
    except OptionError as e:
        return str(e)
    return rules_problem(config("/", "/", fields), os.geteuid() == 0)
