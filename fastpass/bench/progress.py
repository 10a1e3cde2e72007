"""The bench on the terminal: a progress bar while it runs, a table when done (rich, on stderr/stdout)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fastpass.bench.report import latency_figures, num, ratio
from fastpass.bench.runner import BIND, BenchRecord


@contextlib.contextmanager
def bar(total: int) -> Iterator[Callable[..., None]]:
    """A progress callback for runner.run, drawing one bar of `total` measured runs (`step(what,
    runs_done, total)` grows it where more runs were decided on: tune's extra rounds).

    The bar appears at the first report, once every configuration is mounted: a bench refused before
    that (a variant's options that `fastpass mount` rejects) prints its one-line error and nothing else.
    """
    columns = (TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with contextlib.ExitStack() as stack:
        drawn: list[tuple[Progress, TaskID]] = []

        planned = [total]

        def step(what: str, runs_done: int, more: int | None = None) -> None:
            if more is not None:
                planned[0] = more
            if not drawn:
                p = stack.enter_context(Progress(*columns, console=Console(stderr=True)))
                drawn.append((p, p.add_task(what, total=planned[0])))
            p, task = drawn[0]
            p.update(task, description=what, completed=runs_done, total=planned[0])

        yield step
        if drawn:
            p, task = drawn[0]
            p.update(task, description="done", completed=planned[0])


def _spread(median: float, values: list[float], fmt: Callable[[float], str] = num) -> str:
    """The median, and the min-max range under it when there was more than one round."""
    text = fmt(median)
    if len(values) > 1:
        text += f"\n[dim]{fmt(min(values))}-{fmt(max(values))}[/dim]"
    return text


def table(record: BenchRecord) -> None:
    """Each workload's median per configuration, with each fastpass configuration's ratio to the bind mount;
    then, for workloads that time events, the latencies."""
    t = Table(title=f"fastpass / bind mount, same backing, median of {record.repeat} round(s) (min-max below), "
                    f"--clients {record.clients}")  # fmt: skip
    t.add_column("workload")
    t.add_column("unit")
    t.add_column("proc.", justify="right")
    for c in record.configs:
        t.add_column(c.name, justify="right")
        if c.name != BIND:
            t.add_column(f"{c.name}\n/ bind", justify="right")
    t.add_column("cold", justify="center")
    t.add_column("verified", justify="center")
    for r in record.results:
        cells = []
        for c in r.configs:
            cells.append(_spread(c.median, [m.value for m in c.runs]))
            if c.config != BIND:
                cells.append(_spread(c.ratio_median, c.ratios, ratio))
        t.add_row(r.name, r.unit, str(r.processes), *cells, "yes" if r.cold else "", "yes" if r.ok else "[red]FAILED[/red]")
    console = Console()
    # Ranges stay readable when stdout is not a wide terminal: 110 columns for fastpass and bind, more per variant.
    console.width = max(console.width, 110 + 30 * (len(record.configs) - 2))
    console.print(t)
    timed = [(r, c) for r in record.results for c in r.configs if c.latency_ms]
    if timed:
        lt = Table(title="Latency of each event, all rounds (ms)")
        for name in ("workload", "config", "events", "median", "max"):
            lt.add_column(name, justify="left" if name in ("workload", "config") else "right")
        for r, c in timed:
            median, worst = latency_figures(c)
            lt.add_row(r.name, c.config, str(len(c.latency_ms)), f"{median:,.3f}", f"{worst:,.3f}")
        console.print(lt)
