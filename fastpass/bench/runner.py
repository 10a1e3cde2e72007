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
from fastpass.bench.workloads import WORKLOADS, Measurement, cleanup
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
    unit: str
    pairs: list[Pair]
    fastpass_median: float
    bind_median: float
    ratio_median: float
    ok: bool


class BenchRecord(msgspec.Struct):
    schema: int
    fastpass_version: str
    kernel: str
    cpus: int
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
def _backing(path: str | None) -> Iterator[str]:
    if path is not None:
        if not os.path.isdir(path):
            raise BenchError(f"backing directory {path} does not exist")
        yield os.path.realpath(path)
        return
    tmp = tempfile.mkdtemp(prefix="fastpass-bench-", dir="/var/tmp")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _mounts(backing: str, options: list[str]) -> Iterator[tuple[str, str, Negotiated | None]]:
    """(fastpass mountpoint, bind mountpoint, negotiated) for the duration."""
    top = tempfile.mkdtemp(prefix="fastpass-bench-mnt-")
    fp, bind = os.path.join(top, "fastpass"), os.path.join(top, "bind")
    os.mkdir(fp)
    os.mkdir(bind)
    try:
        r = subprocess.run([sys.executable, "-m", "fastpass", "mount", backing, fp, *options],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        if r.returncode != 0:
            raise BenchError(r.stderr.strip().removeprefix("fastpass: error: "))
        record = state.read(fp)
        _linux.mount(backing, bind, "", 4096, "")  # MS_BIND
        yield fp, bind, record.negotiated if record else None
    finally:
        if is_mountpoint(fp):
            subprocess.run([sys.executable, "-m", "fastpass", "unmount", fp], capture_output=True, timeout=60)
        if is_mountpoint(bind):
            _linux.umount2(bind, _linux.MNT_DETACH)
        shutil.rmtree(top, ignore_errors=True)


def run(
    backing: str | None,
    names: list[str],
    repeat: int,
    size_mb: int,
    seconds: float,
    options: list[str],
    progress: Callable[[str], None] = lambda line: None,
) -> BenchRecord:
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise BenchError(f"unknown workload {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    if shutil.which("fio") is None:
        raise BenchError("fio not found: install it (apt-get install fio)")
    started = time.time()
    results = []
    with _backing(backing) as root, _mounts(root, options) as (fp, bind, negotiated):
        for name in names:
            w = WORKLOADS[name]
            w.prepare(root, size_mb)
            os.sync()  # no writeback of the layout competes with the measurement
            pairs = []
            for rnd in range(repeat):
                order = [("fastpass", fp), ("bind", bind)]
                if rnd % 2:
                    order.reverse()
                got: dict[str, Measurement] = {}
                for side, directory in order:
                    progress(f"{name} round {rnd + 1}/{repeat}: {side}")
                    got[side] = w.run(directory, size_mb, seconds)
                    if w.verify:
                        cleanup(root)  # each write run starts from nothing
                        os.sync()
                pairs.append(Pair(got["fastpass"], got["bind"], got["fastpass"].value / max(got["bind"].value, 1e-9)))
            cleanup(root)
            results.append(WorkloadResult(
                name, w.description, pairs[0].fastpass.unit, pairs,
                statistics.median(p.fastpass.value for p in pairs), statistics.median(p.bind.value for p in pairs),
                statistics.median(p.ratio for p in pairs), all(p.fastpass.ok and p.bind.ok for p in pairs),
            ))  # fmt: skip
    return BenchRecord(SCHEMA, __version__, platform.release(), os.cpu_count() or 1, options, negotiated, size_mb,
                       seconds, repeat, results, started, time.time() - started)  # fmt: skip


def table(record: BenchRecord) -> str:
    lines = [f"{'workload':<18} {'unit':<5} {'fastpass':>10} {'bind':>10} {'ratio':>6}  ok"]
    for r in record.results:
        lines.append(f"{r.name:<18} {r.unit:<5} {r.fastpass_median:>10.1f} {r.bind_median:>10.1f} "
                     f"{r.ratio_median:>6.2f}  {'yes' if r.ok else 'NO'}")  # fmt: skip
    return "\n".join(lines)
