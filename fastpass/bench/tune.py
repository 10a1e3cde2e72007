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
workers cost less.  With `--io both` every count is measured on each I/O path
(the io_uring one and plain syscalls), with `--transport both` on each
transport (FUSE-over-io_uring and /dev/fuse), with both on every pair; the
scores span them all, and the recommendation names the path too (its mount
options): the better-scoring one at that count.

The knee is where adding workers stops paying at all, whatever they cost:
the smallest count that no larger count beats by KNEE_GAIN or more, found
per workload and for the score, on each path.  It is what a machine's
scaling is judged by, so the workloads run by many processes run
`--clients` of them (default one per CPU): with fewer clients than CPUs the
knee would be the clients' limit, not the server's.
"""

from __future__ import annotations

import os
import shlex
import statistics
import time
from collections.abc import Callable, Sequence

import msgspec
from rich.box import SIMPLE_HEAD
from rich.console import Console
from rich.table import Table

from fastpass import __version__
from fastpass.bench import runner
from fastpass.bench.report import num
from fastpass.bench.workloads import Load

SCHEMA = 4  # 2: values per (I/O path, count); 3: a path is any mount options (`paths`), not only --io;
# 4: clients, processes, knees

# Three that keep several requests in flight, so extra workers have something to do (metadata and
# openread from --clients processes), and readdir, one request at a time, to show what they cost.  Not
# buffered randread: it mostly measures what the page cache holds (5,972 and 72,357 IOPS at 1 worker in
# two runs on a 2-CPU VM, 19,884 on the bind mount).
SUITE = ["randread-direct", "metadata", "openread", "readdir"]

TOLERANCE = 0.05  # a count this close to the best score counts as as good
KNEE_GAIN = 0.10  # what a larger count must gain to count as growth: twice the runs' few percent of noise

_FLOOR = 1e-9  # a count that did nothing scores ~0 rather than dividing by zero


class TuneWorkload(msgspec.Struct):
    name: str
    description: str
    unit: str
    processes: int  # client processes at once (see runner.WorkloadResult)
    fastpass: list[float]  # median at each (path, count), in TuneRecord.configs() order
    bind: float  # median over every count's bind runs: the bind mount has no workers
    ok: bool  # integrity verified at every count
    knees: list[int | None]  # per path (`knee` of its counts' values)


class TuneRecord(msgspec.Struct):
    schema: int
    fastpass_version: str
    machine: runner.Machine
    counts: list[int]
    paths: list[str]  # the paths tried: mount options, e.g. "--io uring --transport dev" ("": the server's default)
    size_mb: int
    seconds: float
    clients: int  # --clients
    repeat: int
    workloads: list[TuneWorkload]
    scores: list[float]  # per (path, count): geometric mean of `normalised` over the workloads
    knees: list[int | None]  # per path: `knee` of the scores, where the workloads together stop growing
    workers: int  # the recommendation
    path: str  # and its path
    command: str  # the mount command that uses it
    started: float
    elapsed: float

    def configs(self) -> list[tuple[str, int]]:
        """(path, worker count) of each measured value: every count on each path in turn."""
        return [(path, n) for path in self.paths for n in self.counts]


def default_counts() -> list[int]:
    """1 to twice the CPUs: enough to see throughput level off or fall."""
    return list(range(1, 2 * (os.cpu_count() or 1) + 1))


def check(backing: str | None, names: Sequence[str], counts: Sequence[int], repeat: int, clients: int,
          engine: str = "native") -> None:  # fmt: skip
    """Refuse bad input before anything is mounted."""
    runner.check(backing, list(names), repeat, clients)
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


def per_path(values: Sequence[float], paths: int) -> list[list[float]]:
    """Values in TuneRecord.configs() order cut into one list per path, each in count order."""
    k = len(values) // paths
    return [list(values[i * k : (i + 1) * k]) for i in range(paths)]


def knee(counts: Sequence[int], values: Sequence[float]) -> int | None:
    """The smallest count past which throughput stops growing: no larger count gains KNEE_GAIN over its value.

    Against every larger count, not only the next, so that one noisy dip is not
    taken for the knee.  None where the largest count tried still gains that
    much (the knee lies beyond the counts), or only one count was tried.
    """
    for i, (n, v) in enumerate(zip(counts, values)):
        later = values[i + 1 :]
        if later and max(later) < (1 + KNEE_GAIN) * v:
            return n
    return None


def knees(counts: Sequence[int], values: Sequence[float], paths: int) -> list[int | None]:
    """`knee` on each path, of values in TuneRecord.configs() order."""
    return [knee(counts, v) for v in per_path(values, paths)]


def knee_text(found: int | None, counts: Sequence[int]) -> str:
    """A knee as the table shows it: '>N' where throughput still grew at the largest count N."""
    return f">{max(counts)}" if found is None else str(found)


def knee_lines(record: TuneRecord) -> list[str]:
    """Each path's overall knee (of the scores) in a sentence."""
    lines = []
    for path, found in zip(record.paths, record.knees):
        on = f" on {path}" if len(record.paths) > 1 else ""
        lines.append(f"Knee{on}: " + (
            f"{found} worker{'s' * (found > 1)}, the fewest that no more workers beat by {KNEE_GAIN:.0%}"
            if found is not None else
            f"not found: up to {max(record.counts)} workers, more still gained {KNEE_GAIN:.0%}"))  # fmt: skip
    return lines


def recommend(configs: Sequence[tuple[str, int]], per_config: Sequence[float]) -> tuple[str, int]:
    """The smallest count with a score within TOLERANCE of the best, on its best-scoring path."""
    good = [(n, -s, path) for (path, n), s in zip(configs, per_config) if s >= (1 - TOLERANCE) * max(per_config)]
    n, _, path = min(good)
    return path, n


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
    paths: Sequence[str] = ("",),
    *,
    clients: int,
) -> TuneRecord:
    """Bench `names` at each worker count (default `default_counts()`) on each path in `paths`
    (mount options; "": the server's default) and recommend a count and path.

    Each (path, count) gets its own `runner.run`: a fresh mount and freshly prepared
    inputs, so none inherits another's caches.  `progress` is told what starts next
    and how many measured runs are done in all.  `options` go to every mount (and
    into the recommended command), e.g. `--io-depth=16`.  `clients` is the
    --clients of every bench.
    """
    counts = sorted(set(default_counts() if counts is None else counts))
    load = Load(size_mb, seconds, clients)
    check(backing, names, counts, repeat, load.clients, engine)
    started = time.time()
    runs: list[runner.BenchRecord] = []
    configs = [(path, n) for path in paths for n in counts]
    for path, n in configs:
        done = len(runs) * len(names) * repeat * 2
        label = f"{n} workers{f', {path}' if path else ''}"

        def step(what: str, runs_done: int, label: str = label, done: int = done) -> None:
            progress(f"{label}: {what}", done + runs_done)

        runs.append(runner.run(backing, list(names), repeat, load,
                               [f"--workers={n}", f"--engine={engine}", *path.split(), *options], progress=step))  # fmt: skip

    workloads = []
    for results in zip(*(r.results for r in runs)):  # one workload at every (path, count)
        medians = [r.of(runner.FASTPASS).median for r in results]
        workloads.append(TuneWorkload(
            results[0].name, results[0].description, results[0].unit, results[0].processes, medians,
            statistics.median(m.value for r in results for m in r.of(runner.BIND).runs), all(r.ok for r in results),
            knees(counts, medians, len(paths)),
        ))  # fmt: skip
    per_config = scores(workloads)
    path, workers = recommend(configs, per_config)
    where = shlex.quote(os.path.realpath(backing)) if backing else "BACKING"
    extra = "".join(f"{o} " for o in ([path] if path else []) + list(options))
    return TuneRecord(SCHEMA, __version__, runner.Machine.here(), counts, list(paths), size_mb, seconds, load.clients,
                      repeat, workloads, per_config, knees(counts, per_config, len(paths)), workers, path,
                      f"fastpass mount --engine {engine} --workers {workers} {extra}{where} MOUNTPOINT",
                      started, time.time() - started)  # fmt: skip


def table(record: TuneRecord) -> None:
    """Median throughput per (path, count) and workload, a row each (each column's best in bold),
    with the score; rows, not columns, so that many counts still fit a terminal.  Below, each path's knee."""
    t = Table(title=f"fastpass by number of workers, median of {record.repeat} round(s), --clients {record.clients}",
              caption="score: geometric mean over the workloads of value / the workload's best\n"
                      f"knee: the fewest workers that no more workers beat by {KNEE_GAIN:.0%} "
                      f"(>{max(record.counts)}: still growing there)",
              box=SIMPLE_HEAD)  # fmt: skip
    several = len(record.paths) > 1
    t.add_column("workers", justify="right")
    if several:
        t.add_column("path")
    for w in record.workloads:
        t.add_column(f"{w.name}\n{w.unit}, {w.processes} proc." + ("" if w.ok else " [red]FAILED[/red]"),
                     justify="right")  # fmt: skip
    t.add_column("score", justify="right")
    best = [max(w.fastpass) for w in record.workloads]
    chosen = (record.path, record.workers)
    for i, (config, score) in enumerate(zip(record.configs(), record.scores)):
        cells = [f"[bold]{num(w.fastpass[i])}[/bold]" if w.fastpass[i] == b else num(w.fastpass[i])
                 for w, b in zip(record.workloads, best)]  # fmt: skip
        mark = f"[bold green]{score:.2f}[/bold green]" if config == chosen else f"{score:.2f}"
        t.add_row(str(config[1]), *([config[0]] if several else []), *cells, mark)
    t.add_section()
    t.add_row("bind", *([""] if several else []), *(num(w.bind) for w in record.workloads), "")
    t.add_section()
    for i, path in enumerate(record.paths):
        t.add_row("knee", *([path] if several else []),
                  *(knee_text(w.knees[i], record.counts) for w in record.workloads),
                  knee_text(record.knees[i], record.counts))  # fmt: skip
    Console().print(t)


def plot(record: TuneRecord, path: str) -> None:
    """A PNG line chart: each workload's normalised value and the score against the worker count."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display needed, no pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    paths = len(record.paths)
    for i, options in enumerate(record.paths):  # one line style per path
        style = ("-", "--", ":", "-.")[i % 4]
        suffix = f" ({options})" if paths > 1 else ""
        for w in record.workloads:
            ax.plot(record.counts, per_path(normalised(w), paths)[i], marker="o", linewidth=1, alpha=0.7,
                    linestyle=style, label=w.name + suffix)  # fmt: skip
        ax.plot(record.counts, per_path(record.scores, paths)[i], marker="s", color="black", linewidth=2.5,
                linestyle=style, label="score" + suffix)  # fmt: skip
    ax.axhline((1 - TOLERANCE) * max(record.scores), linestyle="--", color="grey", linewidth=1,
               label=f"within {TOLERANCE:.0%} of the best score")  # fmt: skip
    ax.axvline(record.workers, linestyle=":", color="tab:green", linewidth=2,
               label=f"recommended: {record.workers}{f' ({record.path})' if len(record.paths) > 1 else ''}")  # fmt: skip
    ax.set_xticks(record.counts)
    ax.set_xlabel("workers")
    ax.set_ylabel("throughput / best count's (higher is better)")
    ax.set_ylim(0, 1.05)
    m = record.machine
    ax.set_title(f"fastpass {record.fastpass_version} by worker count\nLinux {m.kernel}, {m.cpus} CPUs, "
                 f"{record.repeat} round(s)", fontsize="medium")  # fmt: skip
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(path, format="png", dpi=120)
