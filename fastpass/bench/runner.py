"""`fastpass bench`: fastpass against a bind mount of the same directory, same run.

Every configuration mounts one backing directory: the bind mount (the
kernel's own answer, the reference), fastpass with the bench's options, and
each `--variant`, fastpass with extra mount options.  Each workload runs on
every configuration in each of `repeat` rounds, the order rotating from round
to round (A B, B A with no variant; A B C, B C A, C A B with one), so none
always runs first or last.  The result keeps every run and its ratio to the
bind mount's run of the same round.  Mounts and a generated backing
directory are removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import msgspec

from fastpass import __version__, _linux, state
from fastpass.bench.suites import WORKLOADS
from fastpass.bench.workloads import FioWorkload, Load, Measurement
from fastpass.kernel.init import Negotiated
from fastpass.kernel.mount import is_mountpoint
from fastpass.options import problem as options_problem

SCHEMA = 3  # 2: any number of configurations (variants) instead of one fastpass/bind pair; 3: clients, processes

BIND = "bind"  # the reference every ratio divides by
FASTPASS = "fastpass"  # fastpass with the bench's own options
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # it names a mountpoint directory too


class Variant(msgspec.Struct, frozen=True):
    """fastpass mounted with extra options, after the bench's own (so they win), under its own name."""

    name: str
    options: list[str]


class Config(msgspec.Struct):
    """One mount the bench measured."""

    name: str
    mount_options: list[str] | None  # the `fastpass mount` options; None for the bind mount
    negotiated: Negotiated | None


class ConfigResult(msgspec.Struct):
    """One workload on one configuration."""

    config: str
    runs: list[Measurement]  # one per round
    ratios: list[float]  # per round: this run's value / the bind mount's (1.0 for the bind mount itself)
    median: float
    ratio_median: float

    @property
    def latency_ms(self) -> list[float]:
        """Every timed event of every round (empty for workloads that time none)."""
        return [ms for m in self.runs for ms in m.latency_ms]


class WorkloadResult(msgspec.Struct):
    name: str
    description: str
    cold: bool  # page cache dropped before each run
    processes: int  # client processes at once: --clients for the workloads run by many, else their own count
    unit: str
    orders: list[list[str]]  # per round, the configurations in the order they ran
    configs: list[ConfigResult]  # in BenchRecord.configs order
    ok: bool

    def of(self, config: str) -> ConfigResult:
        return next(c for c in self.configs if c.config == config)


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
    configs: list[Config]  # fastpass, the variants, then the bind mount
    size_mb: int
    seconds: float
    clients: int  # --clients: processes at once in the workloads run by many (each result's `processes`)
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
def _mounts(backing: str, fastpass: dict[str, list[str]]) -> Iterator[dict[str, tuple[str, Negotiated | None]]]:
    """(mountpoint, negotiated) of each fastpass configuration (name -> options), then the bind mount."""
    top = tempfile.mkdtemp(prefix="fastpass-bench-mnt-")
    mounted: dict[str, tuple[str, Negotiated | None]] = {}
    try:
        for name, options in fastpass.items():
            point = os.path.join(top, name)
            os.mkdir(point)
            r = subprocess.run([sys.executable, "-m", "fastpass", "mount", backing, point, *options],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
            if r.returncode != 0:
                raise BenchError(f"{name}: {r.stderr.strip().removeprefix('fastpass: error: ')}")
            record = state.read(point)
            mounted[name] = (point, record.negotiated if record else None)
        bind = os.path.join(top, BIND)
        os.mkdir(bind)
        _linux.mount(backing, bind, "", 4096, "")  # MS_BIND
        mounted[BIND] = (bind, None)
        yield mounted
    finally:
        for name in fastpass:
            point = os.path.join(top, name)
            if is_mountpoint(point):
                subprocess.run([sys.executable, "-m", "fastpass", "unmount", point], capture_output=True, timeout=60,
                               check=False)  # fmt: skip
        if is_mountpoint(os.path.join(top, BIND)):
            _linux.umount2(os.path.join(top, BIND), _linux.MNT_DETACH)
        shutil.rmtree(top, ignore_errors=True)


def drop_caches() -> None:
    """Write back and drop the page cache, dentries and inodes (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def parse_variant(spec: str) -> Variant:
    """`NAME=OPTIONS` (OPTIONS split like a shell would) as a Variant, or a BenchError saying what is wrong."""
    name, eq, text = spec.partition("=")
    if not eq or not _VARIANT_NAME.fullmatch(name):
        raise BenchError(f"--variant {spec!r}: expected NAME=OPTIONS, NAME of letters, digits, '.', '_', '-'")
    if name in (FASTPASS, BIND):
        raise BenchError(f"--variant {name}: the name {name} is the bench's own")
    try:
        args = shlex.split(text)
    except ValueError as e:
        raise BenchError(f"--variant {name}: {e}") from None
    problem = _mount_options_problem(args)
    if problem:
        raise BenchError(f"--variant {name}: {problem}")
    return Variant(name, args)


def _mount_options_problem(args: list[str]) -> str | None:
    """What `fastpass mount` would object to in `args`, found from its options table without mounting."""
    if {"-f", "--foreground"} & set(args):
        return "--foreground: the bench needs mounts that return once they serve"
    return options_problem(args)


def check(backing: str | None, names: list[str], repeat: int, clients: int, variants: Sequence[Variant] = ()) -> None:
    """Refuse bad input before anything is mounted."""
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise BenchError(f"unknown workload {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    if repeat < 1:
        raise BenchError("--repeat must be at least 1")
    if clients < 1:
        raise BenchError("--clients must be at least 1")
    given = [v.name for v in variants]
    twice = sorted({n for n in given if given.count(n) > 1})
    if twice:
        raise BenchError(f"--variant {', '.join(twice)} given twice")
    if backing is not None and not os.path.isdir(backing):
        raise BenchError(f"backing directory {backing} does not exist")
    if os.geteuid() != 0:
        raise BenchError("bench and tune need root: each run is compared with a bind mount of the backing, "
                         "and mount(2) makes one only as root")  # fmt: skip
    if any(isinstance(WORKLOADS[n], FioWorkload) for n in names) and shutil.which("fio") is None:
        raise BenchError("fio not found: install it (apt-get install fio)")


def run(
    backing: str | None,
    names: list[str],
    repeat: int,
    load: Load,
    options: list[str],
    variants: Sequence[Variant] = (),
    progress: Callable[[str, int], None] = lambda what, runs_done: None,
) -> BenchRecord:
    """Run `names` on fastpass (`options`), on each variant and on the bind mount, rotating, and keep every run.

    `progress(what, runs_done)` is told what starts next and how many measured runs are done.
    """
    check(backing, names, repeat, load.clients, variants)
    fastpass = {FASTPASS: options, **{v.name: [*options, *v.options] for v in variants}}
    started = time.time()
    results = []
    done = 0
    with _backing(backing) as (served, sub), _mounts(served, fastpass) as mounted:
        root = os.path.join(served, sub)
        dirs = {config: os.path.join(point, sub) for config, (point, _) in mounted.items()}
        configs = [Config(c, fastpass.get(c), negotiated) for c, (_, negotiated) in mounted.items()]
        for name in names:
            w = WORKLOADS[name]
            progress(f"{name}: preparing", done)
            w.prepare(root, load)
            os.sync()  # no writeback of the layout competes with the measurement
            runs: dict[str, list[Measurement]] = {c: [] for c in dirs}
            orders = []
            for rnd in range(repeat):
                turn = rnd % len(dirs)
                orders.append([*dirs][turn:] + [*dirs][:turn])
                for config in orders[-1]:
                    progress(f"{name} round {rnd + 1}/{repeat}: {config}", done)
                    if w.cold:
                        drop_caches()
                    try:
                        runs[config].append(w.run(dirs[config], root, load))
                    except (OSError, RuntimeError) as e:
                        raise BenchError(f"{name} on {config} failed: {e}") from None
                    done += 1
                    if w.writes:
                        w.reset(root)
                        os.sync()
            shutil.rmtree(w.home(root), ignore_errors=True)
            results.append(_result(w.name, w.description, w.cold, w.processes(load.clients), orders, runs))
    return BenchRecord(SCHEMA, __version__, Machine.here(), configs, load.size_mb, load.seconds, load.clients, repeat,
                       results, started, time.time() - started)  # fmt: skip


def _result(name: str, description: str, cold: bool, processes: int, orders: list[list[str]],
            runs: dict[str, list[Measurement]]) -> WorkloadResult:  # fmt: skip
    """Each configuration's runs with their ratios to the bind mount's run of the same round."""
    configs = []
    for config, measured in runs.items():
        ratios = [m.value / max(b.value, 1e-9) for m, b in zip(measured, runs[BIND])]
        configs.append(ConfigResult(config, measured, ratios, statistics.median(m.value for m in measured),
                                    statistics.median(ratios)))  # fmt: skip
    ok = all(m.ok for measured in runs.values() for m in measured)
    return WorkloadResult(name, description, cold, processes, runs[BIND][0].unit, orders, configs, ok)
