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

How sure it is: every count runs `--repeat` rounds, and each round gets a
score of its own (its values over each workload's best median), so each count
has a range of scores from round to round.  A count is good within 5% of the
best median score (within that, fewer workers cost less), clearly worse where
its best round scores below the best count's worst round, and undecided in
between: then it and the best count run more rounds, up to `--max-repeat`.
The recommendation is the fewest workers not clearly worse; one still
undecided is said to show "no significant difference" from the best, with the
run-to-run spread beside it.  With `--io both` every count is measured on each I/O path
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
from fastpass import options as fastpass_options
from fastpass.bench import runner
from fastpass.bench.report import num
from fastpass.bench.workloads import Load

SCHEMA = 5  # 2: values per (I/O path, count); 3: a path is any mount options (`paths`), not only --io;
# 4: clients, processes, knees; 5: every round's values and scores, the spread, undecided counts

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
    rounds: list[list[float]]  # every round's value at each (path, count)
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
    round_scores: list[list[float]]  # per (path, count): each round's score (`round_scores`)
    spread: float  # run to run: the median over (path, count) of (highest - lowest round score) / score
    undecided: list[int]  # indices of configs() still neither clearly worse nor as good after --max-repeat
    knees: list[int | None]  # per path: `knee` of the scores, where the workloads together stop growing
    workers: int  # the recommendation
    path: str  # and its path
    command: str  # the mount command that uses it
    fstab: str  # and the same as the options of an fstab line (`-o`)
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


def round_scores(workloads: Sequence[TuneWorkload]) -> list[list[float]]:
    """Per config, each round's score: the geometric mean over the workloads of that round's value
    over the workload's best median (the same yardstick as `scores`, so a round may pass 1.0)."""
    bests = [max(max(w.fastpass), _FLOOR) for w in workloads]
    out = []
    for i in range(len(workloads[0].fastpass)):
        rounds = min(len(w.rounds[i]) for w in workloads)
        out.append([statistics.geometric_mean(max(w.rounds[i][r], _FLOOR) / b for w, b in zip(workloads, bests))
                    for r in range(rounds)])  # fmt: skip
    return out


def spread(per_config: Sequence[float], rounds: Sequence[Sequence[float]]) -> float:
    """The run-to-run spread: the median over configs of their round scores' range over their score."""
    return statistics.median((max(r) - min(r)) / max(s, _FLOOR) for s, r in zip(per_config, rounds))


def verdicts(per_config: Sequence[float], rounds: Sequence[Sequence[float]]) -> list[str]:
    """Per config: "good" (within TOLERANCE of the best median score), "worse" (its best round below
    the best config's worst round) or "undecided" (neither: its rounds overlap the best's)."""
    best = max(range(len(per_config)), key=lambda i: per_config[i])
    floor = min(rounds[best])
    return ["good" if s >= (1 - TOLERANCE) * per_config[best] else "worse" if max(r) < floor else "undecided"
            for s, r in zip(per_config, rounds)]  # fmt: skip


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


def recommend(configs: Sequence[tuple[str, int]], per_config: Sequence[float], found: Sequence[str]) -> tuple[str, int]:
    """The smallest count not clearly worse than the best (`found`: its `verdicts`), on its best-scoring path."""
    kept = [(n, -s, path) for (path, n), s, v in zip(configs, per_config, found) if v != "worse"]
    n, _, path = min(kept)
    return path, n


def doubt(record: TuneRecord) -> str | None:
    """A sentence where the recommendation is not significantly different from the best but not
    within TOLERANCE of it either (undecided after --max-repeat rounds); None where it is decided."""
    configs = record.configs()
    chosen = configs.index((record.path, record.workers))
    if chosen not in record.undecided:
        return None
    best = configs[max(range(len(configs)), key=lambda i: record.scores[i])]
    on = f" on {record.path}" if len(record.paths) > 1 else ""
    return (f"No significant difference between {record.workers} and {best[1]} workers{on}: their scores "
            f"{record.scores[chosen]:.2f} and {max(record.scores):.2f}\n  differ by less than the rounds vary")


def run(
    backing: str | None,
    names: Sequence[str] = SUITE,
    counts: Sequence[int] | None = None,
    repeat: int = 3,
    size_mb: int = 256,
    seconds: float = 3.0,
    progress: Callable[..., None] = lambda what, runs_done, more=None: None,
    options: Sequence[str] = (),
    engine: str = "native",
    paths: Sequence[str] = ("",),
    *,
    clients: int,
    max_repeat: int | None = None,
) -> TuneRecord:
    """Bench `names` at each worker count (default `default_counts()`) on each path in `paths`
    (mount options; "": the server's default) and recommend a count and path.

    Each (path, count) gets its own `runner.run` of `repeat` rounds: a fresh mount and freshly
    prepared inputs, so none inherits another's caches.  Then the counts still undecided that
    could change the recommendation run a round more each, with the best count, until decided or
    at `max_repeat` rounds (default: `repeat`, no more).  `progress(what, runs_done, more)` is
    told what starts next, how many measured runs are done in all, and `more`, when it grows, how
    many there will be.  `options` go to every mount (and into the recommended command), e.g.
    `--io-depth=16`.  `clients` is the --clients of every bench.
    """
    counts = sorted(set(default_counts() if counts is None else counts))
    max_repeat = repeat if max_repeat is None else max(max_repeat, repeat)
    load = Load(size_mb, seconds, clients)
    check(backing, names, counts, repeat, load.clients, engine)
    started = time.time()
    configs = [(path, n) for path in paths for n in counts]
    values: list[list[list[float]]] = [[[] for _ in names] for _ in configs]  # [config][workload][round]
    binds: list[list[float]] = [[] for _ in names]
    oks = [True] * len(names)
    about: list[tuple[str, str, str, int]] = []  # name, description, unit, processes of each workload
    runs_done = 0

    def measure(i: int, rounds: int) -> None:
        nonlocal runs_done
        path, n = configs[i]
        label = f"{n} workers{f', {path}' if path else ''}"
        done = runs_done

        def step(what: str, count: int) -> None:
            progress(f"{label}: {what}", done + count)

        record = runner.run(backing, list(names), rounds, load,
                            [f"--workers={n}", f"--engine={engine}", *path.split(), *options], progress=step)  # fmt: skip
        for w, result in enumerate(record.results):
            values[i][w] += [m.value for m in result.of(runner.FASTPASS).runs]
            binds[w] += [m.value for m in result.of(runner.BIND).runs]
            oks[w] = oks[w] and result.ok
            if len(about) <= w:
                about.append((result.name, result.description, result.unit, result.processes))
        runs_done += rounds * len(names) * 2

    def workloads() -> list[TuneWorkload]:
        out = []
        for w, (name, description, unit, processes) in enumerate(about):
            medians = [statistics.median(values[i][w]) for i in range(len(configs))]
            out.append(TuneWorkload(name, description, unit, processes, medians, [values[i][w] for i in range(len(configs))],
                                    statistics.median(binds[w]), oks[w], knees(counts, medians, len(paths))))  # fmt: skip
        return out

    for i in range(len(configs)):
        measure(i, repeat)
    while True:
        found = workloads()
        per_config, rounds = scores(found), round_scores(found)
        judged = verdicts(per_config, rounds)
        path, workers = recommend(configs, per_config, judged)
        best = max(range(len(configs)), key=lambda i: per_config[i])
        pending = [i for i, v in enumerate(judged)
                   if v == "undecided" and configs[i][1] <= workers and len(rounds[i]) < max_repeat]  # fmt: skip
        if not pending:
            break
        more = [*pending, best]
        progress("a round more where undecided", runs_done, runs_done + len(more) * len(names) * 2)
        for i in more:
            measure(i, 1)
    undecided = [i for i, v in enumerate(judged) if v == "undecided"]
    where = shlex.quote(os.path.realpath(backing)) if backing else "BACKING"
    extra = "".join(f"{o} " for o in ([path] if path else []) + list(options))
    fstab = fastpass_options.as_o([f"--workers={workers}", f"--engine={engine}", *path.split(), *options])
    return TuneRecord(SCHEMA, __version__, runner.Machine.here(), counts, list(paths), size_mb, seconds, load.clients,
                      repeat, found, per_config, rounds, spread(per_config, rounds), undecided,
                      knees(counts, per_config, len(paths)), workers, path,
                      f"fastpass mount --engine {engine} --workers {workers} {extra}{where} MOUNTPOINT", fstab,
                      started, time.time() - started)  # fmt: skip


def table(record: TuneRecord) -> None:
    """Median throughput per (path, count) and workload, a row each (each column's best in bold),
    with the score; rows, not columns, so that many counts still fit a terminal.  Below, each path's knee."""
    most = max(len(r) for r in record.round_scores)
    rounds = f"{record.repeat}" + (f"-{most}" if most > record.repeat else "")
    t = Table(title=f"fastpass by number of workers, median of {rounds} round(s), --clients {record.clients}",
              caption="score: geometric mean over the workloads of value / the workload's best "
                      "(below it: its rounds' lowest-highest, each round scored alone, so the score of the medians "
                      "may lie outside it)\n"
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
        if len(record.round_scores[i]) > 1:
            mark += f"\n[dim]{min(record.round_scores[i]):.2f}-{max(record.round_scores[i]):.2f}[/dim]"
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
