"""Python workloads: the metadata and small-file work fio does not model.

These measure what a FUSE server pays per request rather than per byte:
LOOKUP, OPEN, RELEASE, CREATE, GETATTR, UNLINK, READDIR(PLUS) and many short
READs and WRITEs, and how soon a change made beside the mount shows through
it.  Like the fio workloads they check what they see: metadata reads back
every file it created, openread compares every read with what prepare wrote,
readdir counts every name, smallfiles compares a sha256 of every copied file
with one recorded when the source was generated, stat-tree compares every
size with the one it wrote, oob-latency waits for the exact new state.

metadata and openread run in --clients processes at once (`_in_clients`), each
on its own files, so that they load as many CPUs as the machine has; the
others are one process.

Writing workloads put each run's output in `fresh` directories (see
`Workload.fresh`): the runner removes them in the backing between runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from fastpass.bench.workloads import Load, Measurement, Workload


def _in_clients(load: Load, work: Callable[[int, float], tuple[int, str]]) -> Measurement:
    """`work(client, deadline)` -> (operations, first problem or "") in `load.clients` processes at once: ops/s of all.

    Processes, not threads: the GIL would serialise the syscalls' Python side
    and hide the server's own parallelism.  Every client is forked before any
    starts (they wait for the parent to close `go`), so forking many takes
    nothing from the first ones' time, and the time runs from that start until
    the last report.
    """
    go_r, go_w = os.pipe()
    children = []  # (pid, read end of the pipe the child reports on)
    reported = False
    try:
        for client in range(load.clients):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.close(go_w)
                _client(w, go_r, work, client, load.seconds)
            os.close(w)
            children.append((pid, r))
        os.close(go_w)
        go_w = -1
        start = time.monotonic()
        reports = [_read_report(client, r) for client, (_, r) in enumerate(children)]
        elapsed = time.monotonic() - start
        reported = True
    finally:
        if go_w >= 0:  # an error while forking: the clients forked so far are ended and reaped below
            os.close(go_w)
        os.close(go_r)
        for pid, r in children:  # after an error too: no child outlives the run (or the mount)
            os.close(r)
            if not reported:  # interrupted (Ctrl-C, SIGTERM) or failed: the clients' work is not wanted
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    ops = sum(n for n, _ in reports)
    problems = [p for _, p in reports if p]
    return Measurement(ops / elapsed, "ops/s", not problems, "; ".join(problems))


def _client(w: int, go: int, work: Callable[[int, float], tuple[int, str]], client: int, seconds: float) -> NoReturn:
    """In a forked child: wait for the start, work, write "ops problem" on `w`, exit without unwinding the parent's
    stack."""
    code = 1
    try:
        os.read(go, 1)  # end of file once the parent has forked every client and closed its end
        try:
            ops, problem = work(client, time.monotonic() + seconds)
        except OSError as e:  # reported, not raised: the parent turns it into ok=False
            ops, problem = 0, f"client {client}: {type(e).__name__}: {e}"
        os.write(w, f"{ops} {problem}".encode())
        code = 0
    finally:
        os._exit(code)


def _read_report(client: int, r: int) -> tuple[int, str]:
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    ops, _, problem = b"".join(chunks).decode().partition(" ")
    if not ops:
        return 0, f"client {client} died without a report"
    return int(ops), problem


@dataclass(frozen=True)
class PerClient(Workload):
    """A workload run by --clients processes at once (`_in_clients`), each on its own files."""

    def processes(self, clients: int) -> int:
        return clients


@dataclass(frozen=True)
class Metadata(PerClient):
    """Create, stat, read back and unlink small files, each client in its own directory.

    Own directories, so the clients do not contend on one directory's lock in
    the kernel either.
    """

    def run(self, directory: str, backing: str, load: Load) -> Measurement:
        run_dir = self.fresh(directory)
        return _in_clients(load, lambda client, deadline: _create_stat_unlink(
            os.path.join(run_dir, f"client{client}"), client, deadline))  # fmt: skip


def _create_stat_unlink(directory: str, client: int, deadline: float) -> tuple[int, str]:
    """(operations done, first problem seen or "") until `deadline`: 3 ops a file."""
    os.makedirs(directory, exist_ok=True)
    ops = n = 0
    while time.monotonic() < deadline:
        path = os.path.join(directory, f"f{n}")
        content = f"client {client} file {n}\n".encode()
        _write_new(path, content)
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            back = f.read()
        os.unlink(path)
        ops += 3
        if size != len(content) or back != content:
            return ops, f"{path}: wrote {content!r}, stat said {size} bytes, read back {back!r}"
        n += 1
    return ops, ""


def _write_new(path: str, data: bytes) -> None:
    """Create `path` (mode 0644, it must not exist) holding `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# A common open-read benchmark's shape: 200 files of 4 KiB per client, each open reads one whole file.
OPENREAD_FILES = 200
OPENREAD_SIZE = 4096
OPENREAD_SEED = 20250117


@dataclass(frozen=True)
class OpenRead(PerClient):
    """open + read 4 KiB + close of small files that exist, each client on its own OPENREAD_FILES: what an
    OPEN and a RELEASE cost, with the one READ between them (or none, from a kept page cache).

    Every read is compared with what prepare wrote (regenerated from the seed),
    and each client reads all its files before its deadline counts, so a wrong
    byte in any file fails the run.  Warm: that first pass fills whatever the
    mount lets the kernel cache.  One operation is one open + read + close.
    """

    def prepare(self, backing: str, load: Load) -> None:
        home = self.home(backing)
        shutil.rmtree(home, ignore_errors=True)  # exactly these files, whatever was there
        for client in range(load.clients):
            os.makedirs(os.path.join(home, f"client{client}"))
            for name, data in zip(_openread_names(client), _openread_contents(client)):
                _write_new(os.path.join(home, name), data)

    def run(self, directory: str, backing: str, load: Load) -> Measurement:
        home = self.home(directory)
        return _in_clients(load, lambda client, deadline: _open_read_close(home, client, deadline))


def _openread_names(client: int) -> list[str]:
    return [os.path.join(f"client{client}", f"s{i:03d}") for i in range(OPENREAD_FILES)]


def _openread_contents(client: int) -> list[bytes]:
    rng = random.Random(OPENREAD_SEED + client)
    return [rng.randbytes(OPENREAD_SIZE) for _ in range(OPENREAD_FILES)]


def _open_read_close(home: str, client: int, deadline: float) -> tuple[int, str]:
    """(files read, first problem seen or "") until `deadline` and at least once through every file of `client`."""
    paths = [os.path.join(home, name) for name in _openread_names(client)]
    contents = _openread_contents(client)
    order = list(range(OPENREAD_FILES))
    random.Random(client).shuffle(order)  # a random order, each file once a pass
    ops = 0
    while ops < OPENREAD_FILES or time.monotonic() < deadline:
        i = order[ops % OPENREAD_FILES]
        fd = os.open(paths[i], os.O_RDONLY)
        try:
            data = os.read(fd, OPENREAD_SIZE)
        finally:
            os.close(fd)
        ops += 1
        if data != contents[i]:
            return ops, f"{paths[i]}: read {len(data)} bytes that differ from the {OPENREAD_SIZE} prepare wrote"
    return ops, ""


# Big enough that a pass takes many READDIRPLUS requests (one reply holds a page of
# entries, some tens of names) and lookups, so per-request cost dominates.
READDIR_ENTRIES = 10_000


@dataclass(frozen=True)
class Readdir(Workload):
    """List a 10,000-entry directory and lstat every entry: `ls -l` of a big directory."""

    def prepare(self, backing: str, load: Load) -> None:
        home = self.home(backing)
        shutil.rmtree(home, ignore_errors=True)  # exactly READDIR_ENTRIES, whatever was there
        os.makedirs(home)
        for i in range(READDIR_ENTRIES):
            _write_new(os.path.join(home, f"entry-{i:05d}"), b"")

    def run(self, directory: str, backing: str, load: Load) -> Measurement:
        home = self.home(directory)
        start = time.monotonic()
        counts = []
        while not counts or (not self.cold and time.monotonic() - start < load.seconds):
            seen = 0
            with os.scandir(home) as entries:
                for entry in entries:
                    os.lstat(entry.path)
                    seen += 1
            counts.append(seen)
        elapsed = time.monotonic() - start
        wrong = [c for c in counts if c != READDIR_ENTRIES]
        detail = f"{len(wrong)} of {len(counts)} passes saw {wrong[0]} names, not {READDIR_ENTRIES}" if wrong else ""
        return Measurement(sum(counts) / elapsed, "entries/s", not wrong, detail)


# The source tree: sizes spread evenly over powers of two from 1 B to 256 KiB (so most
# files are small but most bytes are in large ones), in directories up to 3 deep.
SMALLFILES_COUNT = 2000
SMALLFILES_MAX_BITS = 18  # 256 KiB
SMALLFILES_SEED = 20240601


@dataclass(frozen=True)
class Smallfiles(Workload):
    """Copy a tree of mixed-size small files, then read the copy back and check every file's sha256.

    The source and its manifest (relative path -> sha256) are generated in the
    backing, so the check compares with what was written there, not with what
    the mount returned when reading the source.  A run is one copy, not timed:
    --size fixes the work, so both mounts move the same bytes.
    """

    def prepare(self, backing: str, load: Load) -> None:
        home = self.home(backing)
        shutil.rmtree(home, ignore_errors=True)
        src = os.path.join(home, "src")
        rng = random.Random(SMALLFILES_SEED)
        budget = load.size_mb << 20  # scale down: stop before the tree outgrows --size
        manifest = {}
        for i in range(SMALLFILES_COUNT):
            size = int(2 ** rng.uniform(0, SMALLFILES_MAX_BITS))
            depth = rng.randrange(4)
            rel = os.path.join(*[f"d{rng.randrange(4)}" for _ in range(depth)], f"f{i:04d}")
            if size > budget:
                break
            budget -= size
            data = rng.randbytes(size)
            os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
            manifest[rel] = hashlib.sha256(data).hexdigest()
        with open(os.path.join(home, "manifest.json"), "w") as f:
            json.dump(manifest, f)

    def run(self, directory: str, backing: str, load: Load) -> Measurement:
        home = self.home(directory)
        with open(os.path.join(home, "manifest.json")) as f:
            manifest: dict[str, str] = json.load(f)
        src, dst = os.path.join(home, "src"), self.fresh(directory)
        start = time.monotonic()
        moved = 0
        for rel in manifest:  # one file in memory at a time: at most 256 KiB
            with open(os.path.join(src, rel), "rb") as f:
                data = f.read()
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            with open(os.path.join(dst, rel), "wb") as f:
                f.write(data)
            moved += len(data)
        bad = []
        for rel, digest in manifest.items():
            with open(os.path.join(dst, rel), "rb") as f:
                data = f.read()
            moved += len(data)
            if hashlib.sha256(data).hexdigest() != digest:
                bad.append(rel)
        elapsed = time.monotonic() - start
        detail = f"{len(bad)} of {len(manifest)} files differ from the source, e.g. {bad[0]}" if bad else ""
        return Measurement(moved / elapsed / 1e6, "MB/s", not bad, detail)


# Issue 6's stat-heavy tree: 100 directories of 500 files.  Scaled down by --size (one file per
# 5 KiB, so the default 256 MB gives the whole tree and a test's 2 MB gives 400 files).
STAT_TREE_FILES = 50_000
STAT_TREE_PER_DIR = 500
STAT_TREE_FILES_PER_MB = 200
STAT_TREE_ROUNDS = 3
STAT_TREE_SIZES = 251  # file i holds i % 251 bytes: neighbours differ, so a mixed-up answer shows


@dataclass(frozen=True)
class StatTree(Workload):
    """lstat every file of a tree by path, several rounds: what make, git status or rsync do.

    Each round looks every name up again, so it measures how long the kernel
    may trust what it has (the --cache mode's timeouts) and what a request
    costs when it may not.  Warm, like readdir: the kernel's caches carry over
    between runs, which is the point of caching them.  Every answer's size is
    checked against what prepare wrote.
    """

    def prepare(self, backing: str, load: Load) -> None:
        home = self.home(backing)
        shutil.rmtree(home, ignore_errors=True)
        tree = _tree(load.size_mb)
        for d in sorted({os.path.dirname(rel) for rel, _ in tree}):
            os.makedirs(os.path.join(home, d))
        for rel, size in tree:
            _write_new(os.path.join(home, rel), b"s" * size)

    def run(self, directory: str, backing: str, load: Load) -> Measurement:
        home = self.home(directory)
        tree = [(os.path.join(home, rel), size) for rel, size in _tree(load.size_mb)]
        wrong = []
        start = time.monotonic()
        for _ in range(STAT_TREE_ROUNDS):
            for path, size in tree:
                got = os.lstat(path).st_size
                if got != size:
                    wrong.append(f"{path}: {got} bytes, not {size}")
        elapsed = time.monotonic() - start
        detail = f"{len(wrong)} of {len(tree) * STAT_TREE_ROUNDS} stats wrong, e.g. {wrong[0]}" if wrong else ""
        return Measurement(len(tree) * STAT_TREE_ROUNDS / elapsed, "stats/s", not wrong, detail)


def _tree(size_mb: int) -> list[tuple[str, int]]:
    """(relative path, size) of every file of the stat tree for `size_mb`."""
    files = max(1, min(STAT_TREE_FILES, size_mb * STAT_TREE_FILES_PER_MB))
    return [(os.path.join(f"d{i // STAT_TREE_PER_DIR:03d}", f"f{i:05d}"), i % STAT_TREE_SIZES) for i in range(files)]


# Out-of-band changes: how many of each kind a run makes, how often it looks, and how long it waits.
OOB_PER_KIND = 4
OOB_POLL = 0.001  # s between looks through the mount: the latency's resolution
OOB_DEADLINE = 5.0  # s: 5 times the kernel's default trust without a watcher (--cache off)
RENAMED = ".renamed"
OOB_CONTENT, OOB_APPENDED = b"x", b"more"


def _exists(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _append(path: str) -> None:
    with open(path, "ab") as f:
        f.write(OOB_APPENDED)


@dataclass(frozen=True)
class Change:
    """One kind of out-of-band change to a name: made on the backing path, looked for on the mount's."""

    exists: bool  # the name is created (OOB_CONTENT, mode 0644) through the mount before the change
    make: Callable[[str], object]
    shown: Callable[[str], bool]  # the mount shows exactly the changed state


OOB_CHANGES = {
    "append": Change(True, _append, lambda p: os.lstat(p).st_size == len(OOB_CONTENT + OOB_APPENDED)),
    "chmod": Change(True, lambda p: os.chmod(p, 0o600), lambda p: stat.S_IMODE(os.lstat(p).st_mode) == 0o600),
    "create": Change(False, lambda p: _write_new(p, OOB_CONTENT), _exists),
    "unlink": Change(True, os.unlink, lambda p: not _exists(p)),
    "rename": Change(True, lambda p: os.rename(p, p + RENAMED), lambda p: not _exists(p) and _exists(p + RENAMED)),
}


@dataclass(frozen=True)
class OutOfBand(Workload):
    """Change the backing directly and time how long until the mount shows each change.

    The changes a user makes beside a mount (an editor saving a file, a build
    writing its output) reach fastpass only through its watcher (--cache
    auto) or when the kernel's timeouts end (--cache off).  Each change is
    made on a name the mount has just looked at, so the kernel holds something
    stale, and the mount is polled every OOB_POLL until it shows exactly the
    new state (size, mode, name present or gone).  One change at a time: this
    is the latency of one change, not of a burst.  A change not shown within
    OOB_DEADLINE counts as OOB_DEADLINE and fails the run.

    A create too: the name's look-up left the kernel a negative entry
    (`Fs.absent`), kept until the watcher drops it or its timeout ends.
    """

    def run(self, directory: str, backing: str, load: Load) -> Measurement:
        mnt = self.fresh(directory)  # through the mount, so the kernel knows the directory
        back = os.path.join(backing, os.path.relpath(mnt, directory))
        latencies, late = [], []
        for i in range(OOB_PER_KIND):
            for kind, change in OOB_CHANGES.items():
                name = f"{kind}-{i}"
                seen = os.path.join(mnt, name)
                if change.exists:
                    _write_new(seen, OOB_CONTENT)  # the kernel caches the entry and attributes CREATE returns
                if change.shown(seen):  # also the look-up that leaves the kernel something to invalidate
                    raise RuntimeError(f"{seen} shows its change before it was made")
                change.make(os.path.join(back, name))
                made = time.monotonic()
                while not change.shown(seen) and time.monotonic() - made < OOB_DEADLINE:
                    time.sleep(OOB_POLL)
                latency = time.monotonic() - made
                if latency >= OOB_DEADLINE:
                    late.append(name)
                latencies.append(min(latency, OOB_DEADLINE) * 1000)
        detail = f"{len(late)} of {len(latencies)} changes not shown after {OOB_DEADLINE:g} s: {', '.join(late)}"
        return Measurement(1000 / max(statistics.median(latencies), 1e-6), "1/s", not late, detail * bool(late),
                           latencies)  # fmt: skip


PY_WORKLOADS: tuple[Workload, ...] = (
    Metadata(
        "metadata", "create + stat + read back + unlink of small files, a directory per client, verified", writes=True
    ),
    OpenRead("openread", f"open + read 4 KiB + close of existing files, {OPENREAD_FILES} per client, verified"),
    Readdir("readdir", "scandir + lstat of a 10,000-entry directory"),
    Readdir("readdir-cold", "scandir + lstat of a 10,000-entry directory, cold cache, one pass", cold=True),
    Smallfiles("smallfiles", "copy a tree of 1 B..256 KiB files, read back and sha256-checked", writes=True),
    StatTree(
        "stat-tree", f"lstat each file of a tree ({STAT_TREE_FILES:,} from --size 250), {STAT_TREE_ROUNDS} rounds"
    ),
    OutOfBand("oob-latency", "a change in the backing until the mount shows it; 1000 / median ms", writes=True),
)
