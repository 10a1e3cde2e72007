"""`fastpass tune`: how many workers to mount with, measured on this machine.

More workers help only while requests arrive at once and CPUs are free to
serve them; past that each one is another process with its own fds and
memory, competing with the application for the same CPUs.  Where that point
lies depends on the machine and the workload, so tune measures it: for each
worker count it runs the bench (`runner.run`, so the same mounts, checks and
clean-up) with `--workers=N`, and keeps the fastpass median of every workload
at every count.  The bind mount runs too, as the kernel's reference.

The score of a count is the geometric mean, over the workloads, of its value
divided by that workload's best value at any count.  Dividing makes IOPS,
ops/s and MB/s comparable and gives each workload equal weight; the
geometric mean makes a count that halves one workload lose as much as one
that doubles another gains.  The best count thus scores at most 1.0.

The recommendation is the smallest count scoring within 5% of the best:
short runs vary by a few percent between mounts, and within that noise fewer
workers cost less.
"""

from __future__ import annotations

import os
import shlex
import statistics
import time
from collections.abc import Callable, Sequence

import msgspec
from rich.console import Console
from rich.table import Table

from fastpass import __version__
from fastpass.bench import runner
from fastpass.bench.report import num

SCHEMA = 1

# Two that keep several requests in flight, so extra workers have something to do, and readdir,
# one request at a time, to show what they cost.  Not buffered randread: it mostly measures what the
# page cache holds (5,972 and 72,357 IOPS at 1 worker in two runs on a 2-CPU VM, 19,884 on the bind mount).
SUITE = ["randread-direct", "metadata", "readdir"]

TOLERANCE = 0.05  # a count this close to the best score counts as as good

_FLOOR = 1e-9  # a count that did nothing scores ~0 rather than dividing by zero


class TuneWorkload(msgspec.Struct):
    name: str
    description: str
    unit: str
    fastpass: list[float]  # median at each count, in TuneRecord.counts order
    bind: float  # median over every count's bind runs: the bind mount has no workers
    ok: bool  # integrity verified at every count


class TuneRecord(msgspec.Struct):
    schema: int
    fastpass_version: str
    machine: runner.Machine
    counts: list[int]
    size_mb: int
    seconds: float
    repeat: int
    workloads: list[TuneWorkload]
    scores: list[float]  # per count: geometric mean of `normalised` over the workloads
    workers: int  # the recommendation
    command: str  # the mount command that uses it
    started: float
    elapsed: float


def default_counts() -> list[int]:
    """1 to twice the CPUs: enough to see throughput level off or fall."""
    return list(range(1, 2 * (os.cpu_count() or 1) + 1))


def check(backing: str | None, names: Sequence[str], counts: Sequence[int], repeat: int, engine: str = "native") -> None:
    """Refuse bad input before anything is mounted."""
    runner.check(backing, list(names), repeat)
    if not counts or min(counts) < 1:
        raise runner.BenchError("worker counts (--max-workers) must be at least 1")
    if engine == "pyfuse3" and max(counts) > 1:
        raise runner.BenchError("--engine pyfuse3 serves from one process: use --max-workers 1")


def normalised(w: TuneWorkload) -> list[float]:
    """Each count's value over the workload's best: 1.0 at the best count."""
    best = max(max(w.fastpass), _FLOOR)
    return [max(v, _FLOOR) / best for v in w.fastpass]


def scores(workloads: Sequence[TuneWorkload]) -> list[float]:
    return [statistics.geometric_mean(column) for column in zip(*(normalised(w) for w in workloads))]


def recommend(counts: Sequence[int], per_count: Sequence[float]) -> int:
    """The smallest count whose score is within TOLERANCE of the best."""
    return min(c for c, s in zip(counts, per_count) if s >= (1 - TOLERANCE) * max(per_count))


def run(
    backing: str | None,
    names: Sequence[str] = SUITE,
    counts: Sequence[int] | None = None,
    repeat: int = 1,
    size_mb: int = 256,
    seconds: float = 3.0,
    progress: Callable[[str, int], None] = lambda what, runs_done: None,
    options: Sequence[str] = (),
    engine: str = "native",
) -> TuneRecord:
    """Bench `names` at each worker count (default `default_counts()`) and recommend one.

    Each count gets its own `runner.run`: a fresh mount and freshly prepared
    inputs, so no count inherits another's caches.  `progress` is told what
    starts next and how many measured runs are done over all counts.  `options` go to
    every mount (and into the recommended command), e.g. `--io=plain`.
    """
    counts = sorted(set(default_counts() if counts is None else counts))
    check(backing, names, counts, repeat, engine)
    started = time.time()
    runs: list[runner.BenchRecord] = []
    for n in counts:
        done = len(runs) * len(names) * repeat * 2

        def step(what: str, runs_done: int, n: int = n, done: int = done) -> None:
            progress(f"{n} workers: {what}", done + runs_done)

        runs.append(runner.run(backing, list(names), repeat, size_mb, seconds,
                               [f"--workers={n}", f"--engine={engine}", *options], progress=step))  # fmt: skip
    workloads = []
    for results in zip(*(r.results for r in runs)):  # one workload at every count
        workloads.append(TuneWorkload(
            results[0].name, results[0].description, results[0].unit, [r.of(runner.FASTPASS).median for r in results],
            statistics.median(m.value for r in results for m in r.of(runner.BIND).runs), all(r.ok for r in results),
        ))  # fmt: skip
    per_count = scores(workloads)
    workers = recommend(counts, per_count)
    where = shlex.quote(os.path.realpath(backing)) if backing else "BACKING"
    extra = "".join(f"{o} " for o in options)
    return TuneRecord(SCHEMA, __version__, runner.Machine.here(), counts, size_mb, seconds, repeat, workloads,
                      per_count, workers, f"fastpass mount --engine {engine} --workers {workers} {extra}{where} MOUNTPOINT",
                      started, time.time() - started)  # fmt: skip


def table(record: TuneRecord) -> None:
    """Median throughput per workload and count (each row's best in bold), then the scores."""
    t = Table(title=f"fastpass by number of workers, median of {record.repeat} round(s)",
              caption="score: geometric mean over the workloads of value / the workload's best")  # fmt: skip
    t.add_column("workload", no_wrap=True)
    t.add_column("unit")
    for n in record.counts:
        t.add_column(str(n), justify="right")
    t.add_column("bind", justify="right")
    for w in record.workloads:
        best = max(w.fastpass)
        cells = [f"[bold]{num(v)}[/bold]" if v == best else num(v) for v in w.fastpass]
        name = w.name if w.ok else f"{w.name} [red]FAILED[/red]"
        t.add_row(name, w.unit, *cells, num(w.bind))
    t.add_section()
    t.add_row("score", "", *(f"[bold green]{s:.2f}[/bold green]" if n == record.workers else f"{s:.2f}"
                             for n, s in zip(record.counts, record.scores)), "")  # fmt: skip
    Console().print(t)


def plot(record: TuneRecord, path: str) -> None:
    """A PNG line chart: each workload's normalised value and the score against the worker count."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display needed, no pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for w in record.workloads:
        ax.plot(record.counts, normalised(w), marker="o", linewidth=1, alpha=0.7, label=w.name)
    ax.plot(record.counts, record.scores, marker="s", color="black", linewidth=2.5, label="score")
    ax.axhline((1 - TOLERANCE) * max(record.scores), linestyle="--", color="grey", linewidth=1,
               label=f"within {TOLERANCE:.0%} of the best score")  # fmt: skip
    ax.axvline(record.workers, linestyle=":", color="tab:green", linewidth=2, label=f"recommended: {record.workers}")
    ax.set_xticks(record.counts)
    ax.set_xlabel("workers")
    ax.set_ylabel("throughput / best count's (higher is better)")
    ax.set_ylim(0, 1.05)
    m = record.machine
    ax.set_title(f"fastpass {record.fastpass_version} by worker count\nLinux {m.kernel}, {m.cpus} CPUs, "
                 f"{record.repeat} round(s)", fontsize="medium")  # fmt: skip
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(path, format="png", dpi=120)
