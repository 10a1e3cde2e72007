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
    variant: str = ""  # which fastpass mount (--variant NAME), "" when there is one

    @property
    def label(self) -> str:
        return f"{self.name} ({self.variant})" if self.variant else self.name


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
    variants: dict[str, list[str]] = {}  # NAME -> mount options added to mount_options for that variant


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
def _mounts(backing: str, options: list[str], variants: dict[str, list[str]]
            ) -> Iterator[tuple[dict[str, str], str, Negotiated | None]]:  # fmt: skip
    """({variant: fastpass mountpoint}, bind mountpoint, negotiated) for the duration."""
    top = tempfile.mkdtemp(prefix="fastpass-bench-mnt-")
    fps = {v: os.path.join(top, f"fastpass{i}") for i, v in enumerate(variants)}
    bind = os.path.join(top, "bind")
    for d in (*fps.values(), bind):
        os.mkdir(d)
    try:
        for v, fp in fps.items():
            r = subprocess.run([sys.executable, "-m", "fastpass", "mount", backing, fp, *options, *variants[v]],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
            if r.returncode != 0:
                raise BenchError(r.stderr.strip().removeprefix("fastpass: error: "))
        record = state.read(next(iter(fps.values())))
        _linux.mount(backing, bind, "", 4096, "")  # MS_BIND
        yield fps, bind, record.negotiated if record else None
    finally:
        for fp in fps.values():
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


def check(backing: str | None, names: list[str], repeat: int, filters: list[str] | tuple[str, ...] = (),
          variants: list[str] | tuple[str, ...] = ()) -> None:  # fmt: skip
    """Refuse bad input before anything is mounted."""
    bad = [v for v in variants if not v.isidentifier() or v in ("fastpass", "bind")]
    if bad:
        raise BenchError(f"variant names must be identifiers other than fastpass and bind: {', '.join(bad)}")
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
    variants: dict[str, list[str]] | None = None,
) -> BenchRecord:
    """Run `names` on fastpass and on the bind mount, in rotating order, and keep every pair.

    With `variants` (name -> extra mount options), one fastpass mount per
    variant serves the same backing, and each round runs every variant and the
    bind mount back to back: each variant's ratio is against the bind run of
    its own round, so variants compare under the same conditions.
    `progress(what, runs_done)` is told what starts next and how many measured runs are done.
    """
    check(backing, names, repeat)
    variants = variants or {"": []}
    started = time.time()
    results = []
    done = 0
    with _backing(backing) as (served, sub), _mounts(served, options, variants) as (fp_tops, bind_top, negotiated):
        root, bind = os.path.join(served, sub), os.path.join(bind_top, sub)
        sides = [*((v or "fastpass", os.path.join(top, sub)) for v, top in fp_tops.items()), ("bind", bind)]
        for name in names:
            w = WORKLOADS[name]
            progress(f"{name}: preparing", done)
            w.prepare(root, size_mb)
            os.sync()  # no writeback of the layout competes with the measurement
            pairs: dict[str, list[Pair]] = {v: [] for v in variants}
            for rnd in range(repeat):
                order = sides[rnd % len(sides) :] + sides[: rnd % len(sides)]
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
                for v in variants:
                    fp = got[v or "fastpass"]
                    pairs[v].append(Pair(fp, got["bind"], fp.value / max(got["bind"].value, 1e-9)))
            shutil.rmtree(w.home(root), ignore_errors=True)
            results += [WorkloadResult(
                name, w.description, w.cold, ps[0].fastpass.unit, ps,
                statistics.median(p.fastpass.value for p in ps), statistics.median(p.bind.value for p in ps),
                statistics.median(p.ratio for p in ps), all(p.fastpass.ok and p.bind.ok for p in ps), v,
            ) for v, ps in pairs.items()]  # fmt: skip
    return BenchRecord(SCHEMA, __version__, Machine.here(), options, negotiated, size_mb, seconds, repeat, results,
                       started, time.time() - started, {v: o for v, o in variants.items() if v})  # fmt: skip
