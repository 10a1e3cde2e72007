"""Python workloads: the metadata and small-file work fio does not model.

These measure what a FUSE server pays per request rather than per byte:
LOOKUP, CREATE, GETATTR, UNLINK, READDIR(PLUS) and many short READs and
WRITEs.  Like the fio workloads they check what they see: metadata reads back
every file it created, readdir counts every name, smallfiles compares a
sha256 of every copied file with one recorded when the source was generated.

Writing workloads put each run's output in `fresh` directories (see
`Workload.fresh`): the runner removes them in the backing between runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import NoReturn

from fastpass.bench.workloads import Measurement, Workload


@dataclass(frozen=True)
class Metadata(Workload):
    """Create, stat, read back and unlink small files, from `jobs` processes in parallel.

    Processes, not threads: the GIL would serialise the syscalls' Python side and
    hide the server's own parallelism.  Each job has its own subdirectory, so
    the jobs do not contend on one directory's lock in the kernel either.
    """

    jobs: int = 2

    def run(self, directory: str, size_mb: int, seconds: float) -> Measurement:
        start = time.monotonic()
        deadline = start + seconds
        run_dir = self.fresh(directory)
        children = []  # (pid, read end of the pipe the child reports on)
        try:
            for job in range(self.jobs):
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    _job(w, os.path.join(run_dir, f"job{job}"), job, deadline)
                os.close(w)
                children.append((pid, r))
            reports = [_read_report(pid, r) for pid, r in children]
        finally:
            for pid, r in children:  # after an error too: no child outlives the run (or the mount)
                os.close(r)
                os.waitpid(pid, 0)
        elapsed = time.monotonic() - start
        ops = sum(n for n, _ in reports)
        problems = [p for _, p in reports if p]
        return Measurement(ops / elapsed, "ops/s", not problems, "; ".join(problems))


def _create_stat_unlink(directory: str, job: int, deadline: float) -> tuple[int, str]:
    """(operations done, first problem seen or "") until `deadline`: 3 ops a file."""
    os.makedirs(directory, exist_ok=True)
    ops = n = 0
    while time.monotonic() < deadline:
        path = os.path.join(directory, f"f{n}")
        content = f"job {job} file {n}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            back = f.read()
        os.unlink(path)
        ops += 3
        if size != len(content) or back != content:
            return ops, f"{path}: wrote {content!r}, stat said {size} bytes, read back {back!r}"
        n += 1
    return ops, ""


def _job(w: int, directory: str, job: int, deadline: float) -> NoReturn:
    """In a forked child: do the work, write "ops problem" on `w`, exit without unwinding the parent's stack."""
    code = 1
    try:
        try:
            ops, problem = _create_stat_unlink(directory, job, deadline)
        except OSError as e:  # reported, not raised: the parent turns it into ok=False
            ops, problem = 0, f"{type(e).__name__}: {e}"
        os.write(w, f"{ops} {problem}".encode())
        code = 0
    finally:
        os._exit(code)


def _read_report(pid: int, r: int) -> tuple[int, str]:
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    ops, _, problem = b"".join(chunks).decode().partition(" ")
    if not ops:
        return 0, f"job {pid} died without a report"
    return int(ops), problem


# Big enough that a pass takes many READDIRPLUS requests (one reply holds a page of
# entries, some tens of names) and lookups, so per-request cost dominates.
READDIR_ENTRIES = 10_000


@dataclass(frozen=True)
class Readdir(Workload):
    """List a 10,000-entry directory and lstat every entry: `ls -l` of a big directory."""

    def prepare(self, backing: str, size_mb: int) -> None:
        home = self.home(backing)
        shutil.rmtree(home, ignore_errors=True)  # exactly READDIR_ENTRIES, whatever was there
        os.makedirs(home)
        for i in range(READDIR_ENTRIES):
            os.close(os.open(os.path.join(home, f"entry-{i:05d}"), os.O_WRONLY | os.O_CREAT, 0o644))

    def run(self, directory: str, size_mb: int, seconds: float) -> Measurement:
        home = self.home(directory)
        start = time.monotonic()
        counts = []
        while not counts or (not self.cold and time.monotonic() - start < seconds):
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

    def prepare(self, backing: str, size_mb: int) -> None:
        home = self.home(backing)
        shutil.rmtree(home, ignore_errors=True)
        src = os.path.join(home, "src")
        rng = random.Random(SMALLFILES_SEED)
        budget = size_mb << 20  # scale down: stop before the tree outgrows --size
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

    def run(self, directory: str, size_mb: int, seconds: float) -> Measurement:
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


PY_WORKLOADS: tuple[Workload, ...] = (
    Metadata("metadata", "create + stat + read back + unlink of small files, 2 jobs, verified", writes=True),
    Readdir("readdir", "scandir + lstat of a 10,000-entry directory"),
    Readdir("readdir-cold", "scandir + lstat of a 10,000-entry directory, cold cache, one pass", cold=True),
    Smallfiles("smallfiles", "copy a tree of 1 B..256 KiB files, read back and sha256-checked", writes=True),
)
