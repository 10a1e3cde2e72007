"""Mount options, each with what it promises.  Stored as JSON beside the mount."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

DEFAULT_MAX_INODES = 0  # no bound but the nodeid format's (2^32 - 2)
DEFAULT_CACHE_SIZE = 1 << 16
DEFAULT_TIMEOUT = 1.0  # s the kernel trusts what it has when nobody tells it of changes
WATCHED_TIMEOUT = 60.0  # s it trusts them when every outside change is pushed to it
DEFAULT_REVALIDATE = 1.0  # s, where the backing gives no change events
IDLE_SYNC = 1.0  # s between an idle server's looks at what other workers freed (and its filters' flushes)
CACHE_MODES = ("auto", "off", "strict")
ENGINES = ("native", "pyfuse3")
IO_PATHS = ("uring", "plain")
PASSTHROUGH_MODES = ("auto", "on", "off")
SUBTYPE = "fastpass"  # the mount's type is fuse.SUBTYPE unless the subtype option names another
DEFAULT_IO_DEPTH = 8
MAX_IO_DEPTH = 256
TRANSPORTS = ("auto", "uring", "dev")
DEFAULT_QUEUE_DEPTH = 8  # libfuse's default too
MAX_QUEUE_DEPTH = 128
MAX_WORKERS = 63  # worker processes: counter blocks 0-62, the watcher's is the next (fastpass.shm.counters)
MAX_INODES = (1 << 32) - 2  # the nodeid's 32 bits of slot, less slot 0 (fastpass.fs.slots)


class MountConfig(msgspec.Struct, frozen=True):
    backing: str
    mountpoint: str
    # Let users other than the mounter in; each request then runs with the
    # caller's fsuid/fsgid/groups, so the backing's permission checks decide.
    allow_other: bool = False
    # The kernel checks mode bits and POSIX ACLs (the backing's, which it reads through
    # GETATTR and GETXATTR) on every path component, cached dentries included, before
    # asking fastpass: the default_permissions mount option with FUSE_POSIX_ACL.  The
    # command line turns it on with allow_other: without it a user could walk paths that
    # another user's lookups left in the kernel's cache, which no request ever checks.
    default_permissions: bool = False
    # How long (s) the kernel may trust attributes and names without asking;
    # None: what the cache mode implies (`resolve`).
    attr_timeout: float | None = None
    entry_timeout: float | None = None
    # One log line per request and per reply.
    debug: bool = False
    # Where the server logs when it runs in the background.
    log: str | None = None
    # Mount over a non-empty directory, hiding its contents while mounted.
    nonempty: bool = False
    # Worker processes, each reading requests from its own clone of the device fd.
    workers: int = 1
    # The most workers `fastpass workers` and a live `fastpass tune` may set while mounted: each
    # index has a seat (a device clone, its buffers and journal: fds and untouched memory) made at
    # mount.  0: twice the CPUs, at least `workers` (`workers` alone where more cannot serve).
    max_workers: int = 0
    # Kernel passthrough of regular files' reads, writes and mmap: "auto" uses it
    # where the kernel offers it and we are root, "on" refuses to mount without it.
    passthrough: str = "auto"
    # Inodes the kernel may know at once: the inode table's memory cap (200 bytes of shared
    # memory each; the table grows by doubling as the kernel learns of more).  0: no bound
    # but the nodeid format's (2^32 - 2).  Within 1/8 of it (at most 4096 inodes) fastpass
    # asks the kernel to forget cold inodes (FUSE_NOTIFY_PRUNE, Linux 6.18); a lookup at it
    # fails with ENFILE until the kernel has forgotten some.
    max_inodes: int = DEFAULT_MAX_INODES
    # With allow_other: the files and directories one uid may hold open at once, over all
    # workers; past it that uid's opens fail with EMFILE, so the server's fds and handle slots
    # stay for the others.  0: half of the smaller of the fd limit and the handle table
    # (`fastpass.supervisor` resolves it once the limit is raised).
    max_open_per_user: int = 0
    # With allow_other: the inodes one uid's lookups may bring into the table (root's too); that
    # uid's cold inodes are pruned near it, and its lookups of new inodes fail with ENFILE at
    # it, so one user cannot fill the table for root and the others.  0: half of max_inodes.
    max_inodes_per_user: int = 0
    # Filters around the operations, outermost first: each `NAME[:ARG=VALUE,...]` (a built-in)
    # or `MODULE:CLASS[:ARG=VALUE,...]`; see fastpass.filters.
    filters: tuple[str, ...] = ()
    # Attribute caching and coherence with the backing (README, "Caching"): "auto" shares
    # a cache between workers and pushes changes made behind fastpass's back to the kernel;
    # "off" keeps no cache in fastpass; "strict" lets nothing be cached anywhere.
    cache: str = "auto"
    # "native" speaks the kernel protocol with a pool of workers; "pyfuse3" serves the
    # same operations through libfuse in one process (portable; the test reference).
    engine: str = "native"
    # Entries of the shared attribute cache (128 bytes each, touched as used).
    cache_size: int = DEFAULT_CACHE_SIZE
    # With cache auto: trust attributes and names this long (s) and then ask the backing
    # again, instead of watching it for changes.  0: watch where the backing allows,
    # else revalidate every DEFAULT_REVALIDATE seconds.
    revalidate: float = 0.0
    # How a worker does its I/O: "uring" reads requests and runs the backing calls of
    # READ, WRITE, FSYNC and FALLOCATE on one io_uring per worker, many in flight at once
    # (plain syscalls where the kernel refuses io_uring, said once in the log and in stats);
    # "plain" serves one request at a time with blocking syscalls.
    io: str = "uring"
    # With io uring: requests in flight per worker, each with its own 1 MiB buffer (the
    # worker's data memory is io_depth MiB, fixed at start).
    io_depth: int = DEFAULT_IO_DEPTH
    # Where requests come from (fastpass.transport): "uring" takes them from FUSE-over-io_uring
    # entries on each worker's ring (Linux 6.14+; as root it turns the fuse module's enable_uring
    # on for the mount's start, as a normal user it needs it on) and refuses to mount without;
    # "auto" does where the kernel offers it (enable_uring on) and the rings work, /dev/fuse
    # otherwise, said in the log and in stats; "dev" reads /dev/fuse.  Needs io "uring".
    transport: str = "auto"
    # With transport uring: entries each worker registers per queue (one queue per possible CPU,
    # divided among the workers), each with a buffer of max_write (1 MiB), resident.
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    # The kernel's writeback cache (FUSE_WRITEBACK_CACHE) on the userspace data path: writes
    # land in the page cache and reach a worker later, in page-sized batches; the kernel then
    # keeps a regular file's size, mtime and ctime itself while it holds the inode (README,
    # "Caching").  Excludes kernel passthrough (the kernel takes one or the other), so
    # passthrough "auto" means off with it; native engine only.
    writeback_cache: bool = False
    # The VFS's own checks, as mount(8) names them: read-only refuses every change with EROFS
    # before fastpass sees it; set-user-ID bits and device files count only where allowed, and
    # files execute only where exec is allowed.  fusermount3 forces nosuid and nodev for users.
    read_only: bool = False
    nosuid: bool = True
    nodev: bool = True
    noexec: bool = False
    # The VFS's atime and sync flags, as mount(8) names them (its filesystem-independent options):
    # how the kernel updates the access times it keeps (the backing updates its own as it is read),
    # and whether writes and directory changes are synchronous.
    atime: str = "relatime"
    nodiratime: bool = False
    lazytime: bool = False
    sync: bool = False
    dirsync: bool = False
    # The source and type mountinfo shows: `fsname` (default: the backing path) and fuse.`subtype`.
    fsname: str = ""
    subtype: str = SUBTYPE

    def source(self) -> str:
        """The mount's source as mountinfo shows it."""
        return self.fsname or self.backing

    def mount_options(self) -> list[str]:
        """The options the mount itself carries, as mount(8) and fusermount3 name them."""
        return [
            "ro" if self.read_only else "rw",
            "nosuid" if self.nosuid else "suid",
            "nodev" if self.nodev else "dev",
            "noexec" if self.noexec else "exec",
            *([self.atime] if self.atime != "relatime" else []),  # the kernel's default; fusermount3 knows no name for it
            *(["nodiratime"] if self.nodiratime else []),
            *(["lazytime"] if self.lazytime else []),
            *(["sync"] if self.sync else []),
            *(["dirsync"] if self.dirsync else []),
            *(["allow_other"] if self.allow_other else []),
            *(["default_permissions"] if self.default_permissions else []),
        ]


# The option rules that need nothing of the system: ranges, and which options exclude which.  Each
# is (broken, why): `broken(config, root)` is true where `config` breaks the rule for a server
# running as root (`root`) or not.  `problem` finds the first one broken; the supervisor checks
# the rest, which need the system (the paths, the kernel's features, privileges held).
RULES: tuple[tuple[Callable[[MountConfig, bool], bool], str], ...] = (
    (lambda c, root: c.passthrough == "on" and not root,
     "--passthrough on needs root: registering backing files takes CAP_SYS_ADMIN"),
    (lambda c, root: bool(c.max_inodes) and not 16 <= c.max_inodes <= MAX_INODES,
     f"--max-inodes must be 0 (no bound) or from 16 to {MAX_INODES}"),
    (lambda c, root: c.max_inodes_per_user < 0, "--max-inodes-per-user must be 0 (half of --max-inodes) or more"),
    (lambda c, root: c.max_open_per_user < 0, "--max-open-per-user must not be negative"),
    (lambda c, root: not 1 <= c.workers <= MAX_WORKERS, f"--workers must be from 1 to {MAX_WORKERS}"),
    (lambda c, root: bool(c.max_workers) and not c.workers <= c.max_workers <= MAX_WORKERS,
     f"--max-workers must be 0 (twice the CPUs) or from --workers to {MAX_WORKERS}"),
    (lambda c, root: c.engine not in ENGINES, f"--engine must be one of {', '.join(ENGINES)}"),
    (lambda c, root: c.engine == "pyfuse3" and c.workers > 1,
     "--engine pyfuse3 serves from one process: --workers must be 1"),
    (lambda c, root: c.engine == "pyfuse3" and c.passthrough == "on",
     "--engine pyfuse3 cannot do kernel passthrough (libfuse has no backing ids): use --passthrough off or auto"),
    (lambda c, root: c.engine == "pyfuse3" and c.io == "uring",
     "--engine pyfuse3 has no io_uring path (libfuse reads the requests): use --io plain"),
    (lambda c, root: c.cache not in CACHE_MODES, f"--cache must be one of {', '.join(CACHE_MODES)}"),
    (lambda c, root: c.writeback_cache and c.passthrough == "on",
     ("--writeback-cache excludes --passthrough on: the kernel takes no passthrough with the writeback cache "
     "(use --passthrough off or auto)")),
    (lambda c, root: c.writeback_cache and c.engine == "pyfuse3", "--writeback-cache is for the native engine"),
    (lambda c, root: c.writeback_cache and c.cache == "strict",
     "--writeback-cache keeps written data and sizes in the kernel, and --cache strict caches nothing: choose one"),
    (lambda c, root: c.writeback_cache and c.allow_other and not c.default_permissions,
     ("--writeback-cache with --allow-other needs --default-permissions: the kernel then checks who may set a "
     "file's times, which it sends as its own after writes")),
    (lambda c, root: c.writeback_cache and bool(c.filters),
     ("--writeback-cache takes no --filter: the kernel answers writes itself and sends them later, in pages, so a "
     "filter could neither refuse a write nor change what it does to a file's size")),
    (lambda c, root: c.io not in IO_PATHS, f"--io must be one of {', '.join(IO_PATHS)}"),
    (lambda c, root: not 1 <= c.io_depth <= MAX_IO_DEPTH, f"--io-depth must be from 1 to {MAX_IO_DEPTH}"),
    (lambda c, root: c.transport not in TRANSPORTS, f"--transport must be one of {', '.join(TRANSPORTS)}"),
    (lambda c, root: not 1 <= c.queue_depth <= MAX_QUEUE_DEPTH, f"--queue-depth must be from 1 to {MAX_QUEUE_DEPTH}"),
    (lambda c, root: c.transport == "uring" and c.engine == "pyfuse3",
     "--engine pyfuse3 takes requests through libfuse: use --transport dev"),
    (lambda c, root: c.transport == "uring" and c.io != "uring",
     "--transport uring takes requests on each worker's io_uring: it needs --io uring"),
    (lambda c, root: c.cache_size < 1, "--cache-size must be at least 1"),
    (lambda c, root: c.revalidate < 0, "--revalidate must not be negative"),
    (lambda c, root: bool(c.revalidate) and c.cache != "auto", "--revalidate applies to --cache auto only"),
    (lambda c, root: c.attr_timeout is not None and c.attr_timeout < 0, "--attr-timeout must not be negative"),
    (lambda c, root: c.entry_timeout is not None and c.entry_timeout < 0, "--entry-timeout must not be negative"),
)  # fmt: skip


def problem(config: MountConfig, root: bool) -> str | None:
    """Why `config` cannot be mounted whatever the system (`RULES`), or None."""
    return next((why for broken, why in RULES if broken(config, root)), None)


def resolve(config: MountConfig, watched: bool) -> MountConfig:
    """The kernel timeouts and revalidation period a mount runs with, once it is known whether
    the backing's changes are watched."""
    if config.cache == "strict":
        return msgspec.structs.replace(config, attr_timeout=0.0, entry_timeout=0.0, revalidate=0.0)
    if config.cache == "off":
        default, bound, revalidate = DEFAULT_TIMEOUT, None, 0.0
    elif watched:
        default, bound, revalidate = WATCHED_TIMEOUT, None, 0.0
    else:
        revalidate = config.revalidate or DEFAULT_REVALIDATE
        default, bound = revalidate, revalidate
    attr = default if config.attr_timeout is None else config.attr_timeout
    entry = default if config.entry_timeout is None else config.entry_timeout
    if bound is not None:
        attr, entry = min(attr, bound), min(entry, bound)
    return msgspec.structs.replace(config, attr_timeout=attr, entry_timeout=entry, revalidate=revalidate)


def split_time(seconds: float) -> tuple[int, int]:
    """(sec, nsec) of a timeout, the form every FUSE reply carries."""
    whole = int(seconds)
    return whole, round((seconds - whole) * 1e9)
