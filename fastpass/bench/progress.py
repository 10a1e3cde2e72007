"""The bench on the terminal: a progress bar while it runs, a table when done (rich, on stderr/stdout)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fastpass.bench.runner import BenchRecord


@contextlib.contextmanager
def bar(total: int) -> Iterator[Callable[[str, int], None]]:
    """A progress callback for runner.run, drawing one bar of `total` measured runs."""
    columns = (TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as p:
        task = p.add_task("starting", total=total)
        yield lambda what, runs_done: p.update(task, description=what, completed=runs_done)
        p.update(task, description="done", completed=total)


def _spread(median: float, values: list[float], fmt: str = ",.1f") -> str:
    """The median, and the min-max range under it when there was more than one round."""
    text = format(median, fmt)
    if len(values) > 1:
        text += f"\n[dim]{format(min(values), fmt)}-{format(max(values), fmt)}[/dim]"
    return text


def table(record: BenchRecord) -> None:
    t = Table(title=f"fastpass / bind mount, same backing, median of {record.repeat} round(s) (min-max below)")
    for name, justify in (("workload", "left"), ("unit", "left"), ("fastpass", "right"), ("bind", "right"),
                          ("ratio", "right"), ("cold", "center"), ("verified", "center")):  # fmt: skip
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in record.results:
        t.add_row(r.label, r.unit, _spread(r.fastpass_median, [p.fastpass.value for p in r.pairs]),
                  _spread(r.bind_median, [p.bind.value for p in r.pairs]), _spread(r.ratio_median,
                  [p.ratio for p in r.pairs], ".2f"), "yes" if r.cold else "", "yes" if r.ok else "[red]FAILED[/red]")  # fmt: skip
    console = Console()
    console.width = max(console.width, 110)  # ranges stay readable when stdout is not a wide terminal
    console.print(t)
