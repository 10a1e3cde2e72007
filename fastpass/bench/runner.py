"""`fastpass bench`: fastpass against a bind mount of the same directory, same run.

Both mounts serve one backing directory; each workload runs on both,
alternating which goes first (A B, B A, ...) for `repeat` rounds, and the
result keeps every pair with its ratio fastpass/bind.  Mounts and a
generated backing directory are removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import msgspec

from fastpass import __version__, _linux, state
from fastpass.bench.suites import WORKLOADS
from fastpass.bench.workloads import FioWorkload, Measurement
from fastpass.filters import load
from fastpass.kernel.init import Negotiated
from fastpass.kernel.mount import is_mountpoint

SCHEMA = 1


class Pair(msgspec.Struct):
    fastpass: Measurement
    bind: Measurement
    ratio: float


class WorkloadResult(msgspec.Struct):
    name: str
    description: str
    cold: bool  # page cache dropped before each run
    unit: str
    pairs: list[Pair]
    fastpass_median: float
    bind_median: float
    ratio_median: float
    ok: bool


class Machine(msgspec.Struct):
    kernel: str
    cpus: int
    cpu_model: str
    memory_gib: float
    python: str

    @classmethod
    def here(cls) -> Machine:
        model = ""
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
        return cls(platform.release(), os.cpu_count() or 1, model, round(mem, 1), platform.python_version())


class BenchRecord(msgspec.Struct):
    schema: int
    fastpass_version: str
    machine: Machine
    mount_options: list[str]
    negotiated: Negotiated | None
    size_mb: int
    seconds: float
    repeat: int
    results: list[WorkloadResult]
    started: float
    elapsed: float


class BenchError(Exception):
    """Bad bench input; the message is for the user."""


@contextlib.contextmanager
def _backing(path: str | None) -> Iterator[tuple[str, str]]:
    """(directory to mount, the bench's own subdirectory of it, relative to it).

    In a given BACKING the bench works in a new hidden subdirectory and removes
    only that, so nothing already there is touched.
    """
    if path is None:
        tmp = tempfile.mkdtemp(prefix="fastpass-bench-", dir="/var/tmp")
        try:
            yield tmp, "."
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    path = os.path.realpath(path)
    sub = tempfile.mkdtemp(prefix=".fastpass-bench-", dir=path)
    try:
        yield path, os.path.basename(sub)
    finally:
        shutil.rmtree(sub, ignore_errors=True)


@contextlib.contextmanager
def _mounts(backing: str, options: list[str]) -> Iterator[tuple[str, str, Negotiated | None]]:
    """(fastpass mountpoint, bind mountpoint, negotiated) for the duration."""
    top = tempfile.mkdtemp(prefix="fastpass-bench-mnt-")
    fp, bind = os.path.join(top, "fastpass"), os.path.join(top, "bind")
    os.mkdir(fp)
    os.mkdir(bind)
    try:
        r = subprocess.run([sys.executable, "-m", "fastpass", "mount", backing, fp, *options],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if r.returncode != 0:
            raise BenchError(r.stderr.strip().removeprefix("fastpass: error: "))
        record = state.read(fp)
        _linux.mount(backing, bind, "", 4096, "")  # MS_BIND
        yield fp, bind, record.negotiated if record else None
    finally:
        if is_mountpoint(fp):
            subprocess.run([sys.executable, "-m", "fastpass", "unmount", fp], capture_output=True, timeout=60,
                           check=False)  # fmt: skip
        if is_mountpoint(bind):
            _linux.umount2(bind, _linux.MNT_DETACH)
        shutil.rmtree(top, ignore_errors=True)


def drop_caches() -> None:
    """Write back and drop the page cache, dentries and inodes (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def check(backing: str | None, names: list[str], repeat: int, filters: list[str] | tuple[str, ...] = ()) -> None:
    """Refuse bad input before anything is mounted."""
    try:
        load.load_all(filters)  # made here only to be checked; the mount makes its own
    except load.SpecError as e:
        raise BenchError(str(e)) from None
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise BenchError(f"unknown workload {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    if repeat < 1:
        raise BenchError("--repeat must be at least 1")
    if backing is not None and not os.path.isdir(backing):
        raise BenchError(f"backing directory {backing} does not exist")
    cold = [n for n in names if WORKLOADS[n].cold]
    if cold and os.geteuid() != 0:
        raise BenchError(f"cold-cache workloads ({', '.join(cold)}) drop the page cache and need root")
    if any(isinstance(WORKLOADS[n], FioWorkload) for n in names) and shutil.which("fio") is None:
        raise BenchError("fio not found: install it (apt-get install fio)")


def run(
    backing: str | None,
    names: list[str],
    repeat: int,
    size_mb: int,
    seconds: float,
    options: list[str],
    progress: Callable[[str, int], None] = lambda what, runs_done: None,
) -> BenchRecord:
    """Run `names` on fastpass and on the bind mount, alternating, and keep every pair.

    `progress(what, runs_done)` is told what starts next and how many measured runs are done.
    """
    check(backing, names, repeat)
    started = time.time()
    results = []
    done = 0
    with _backing(backing) as (served, sub), _mounts(served, options) as (fp_top, bind_top, negotiated):
        root, fp, bind = (os.path.join(top, sub) for top in (served, fp_top, bind_top))
        for name in names:
            w = WORKLOADS[name]
            progress(f"{name}: preparing", done)
            w.prepare(root, size_mb)
            os.sync()  # no writeback of the layout competes with the measurement
            pairs = []
            for rnd in range(repeat):
                order = [("fastpass", fp), ("bind", bind)]
                if rnd % 2:
                    order.reverse()
                got: dict[str, Measurement] = {}
                for side, directory in order:
                    progress(f"{name} round {rnd + 1}/{repeat}: {side}", done)
                    if w.cold:
                        drop_caches()
                    try:
                        got[side] = w.run(directory, size_mb, seconds)
                    except (OSError, RuntimeError) as e:
                        raise BenchError(f"{name} on {side} failed: {e}") from None
                    done += 1
                    if w.writes:
                        w.reset(root)
                        os.sync()
                pairs.append(Pair(got["fastpass"], got["bind"], got["fastpass"].value / max(got["bind"].value, 1e-9)))
            shutil.rmtree(w.home(root), ignore_errors=True)
            results.append(WorkloadResult(
                name, w.description, w.cold, pairs[0].fastpass.unit, pairs,
                statistics.median(p.fastpass.value for p in pairs), statistics.median(p.bind.value for p in pairs),
                statistics.median(p.ratio for p in pairs), all(p.fastpass.ok and p.bind.ok for p in pairs),
            ))  # fmt: skip
    return BenchRecord(SCHEMA, __version__, Machine.here(), options, negotiated, size_mb, seconds, repeat, results,
                       started, time.time() - started)  # fmt: skip
