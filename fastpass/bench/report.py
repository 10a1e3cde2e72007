"""A bench record as a Markdown report and as a chart of the ratios.

Both are made from the record alone (the JSON `--json` writes decodes to the
same struct), so a report can be redrawn later from a saved run.
"""

from __future__ import annotations

import datetime
import shlex
import statistics
from collections.abc import Callable

from fastpass.bench.runner import BIND, BenchRecord, Config, ConfigResult, WorkloadResult


def num(value: float) -> str:
    """Throughputs span 0.5 MB/s to 500,000 IOPS: no decimals once they would be noise."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def latency_figures(c: ConfigResult) -> tuple[float, float]:
    """(median, max) in ms over every timed event of every round."""
    return statistics.median(c.latency_ms), max(c.latency_ms)


def _cell(median: float, values: list[float], fmt: Callable[[float], str] = num) -> str:
    """The median, with the min-max range over the rounds when there was more than one."""
    return fmt(median) + (f" ({fmt(min(values))}-{fmt(max(values))})" if len(values) > 1 else "")


def ratio(value: float) -> str:
    """Two decimals; two significant digits below 0.01 (a latency against the bind mount's is 0.001 or less)."""
    return f"{value:.2f}" if value >= 0.01 else f"{value:.2g}"


def _row(r: WorkloadResult) -> str:
    cells = [f"`{r.name}`", r.description, r.unit, str(r.processes)]
    for c in r.configs:
        cells.append(_cell(c.median, [m.value for m in c.runs]))
        if c.config != BIND:
            cells.append(_cell(c.ratio_median, c.ratios, ratio))
    cells += ["yes" if r.cold else "no", "yes" if r.ok else "**NO**"]
    return "| " + " | ".join(cells) + " |"


def _config(c: Config) -> str:
    if c.mount_options is None:
        return f"- `{c.name}`: a bind mount of the backing directory, the reference"
    n = c.negotiated
    protocol = (f"7.{n.minor} (kernel offered {n.kernel_major}.{n.kernel_minor}); flags: "
                f"{', '.join(f'`{f}`' for f in n.flags) or 'none'}") if n else "not recorded"  # fmt: skip
    options = f"`{shlex.join(c.mount_options)}`" if c.mount_options else "defaults"
    return f"- `{c.name}`: fastpass mounted with {options}; FUSE protocol negotiated: {protocol}"


def markdown(record: BenchRecord) -> str:
    m = record.machine
    started = datetime.datetime.fromtimestamp(record.started, datetime.UTC)
    cold = [r.name for r in record.results if r.cold]
    failed = [r for r in record.results if not r.ok]
    header = ["workload", "what", "unit", "processes"]
    for c in record.configs:
        header += [c.name] if c.name == BIND else [c.name, f"{c.name} / bind"]
    header += ["cold", "ok"]
    timed = [(r, c) for r in record.results for c in r.configs if c.latency_ms]
    lines = [
        "# fastpass bench: fastpass against a bind mount of the same directory",
        "",
        (
            f"- Run: {started:%Y-%m-%d %H:%M} UTC, {record.elapsed:.0f} s; {record.repeat} round(s) per workload, "
            f"--size {record.size_mb} MB, --seconds {record.seconds:g}, --clients {record.clients}"
        ),
        f"- Machine: {m.cpu_model or 'unknown CPU'}, {m.cpus} CPUs, {m.memory_gib:g} GiB memory, Python {m.python}",
        f"- Kernel: {m.kernel}",
        f"- fastpass: {record.fastpass_version}",
        "- Configurations, all serving the same backing directory:",
        *(f"  {_config(c)}" for c in record.configs),
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|---|" + "--:|" * (len(header) - 5) + ":-:|:-:|",
        *(_row(r) for r in record.results),
        "",
    ]
    if timed:
        lines += [
            "Latency of each timed event, over all rounds (ms):",
            "",
            "| workload | configuration | events | median | max |",
            "|---|---|--:|--:|--:|",
            *(f"| `{r.name}` | {c.config} | {len(c.latency_ms)} | {latency_figures(c)[0]:,.3f} | "
              f"{latency_figures(c)[1]:,.3f} |" for r, c in timed),
            "",
        ]  # fmt: skip
    lines += [
        "Notes:",
        "",
        (
            "- Each cell is the median over the rounds, with the min-max range in brackets. "
            "X / bind = X's value over the bind mount's, computed per round (each round runs every "
            "configuration, in rotating order) and the median taken over the rounds. Every unit is "
            "higher-is-better, so a ratio above 1 means that configuration was faster than the kernel's own "
            "bind mount of the same directory."
        ),
        (
            "- processes: how many processes ran the workload at once: --clients for those run by many "
            "(`metadata`, `openread`, each client on its own files), fio's own jobs, else one."
        ),
        (
            "- Workloads that time single events (`oob-latency`: a change made in the backing until the mount "
            "shows it) report 1000 / the median latency in ms as their value, and the latencies themselves "
            "in their own table."
        ),
        (
            f"- Cold workloads (page cache, dentries and inodes dropped before every run): "
            f"{', '.join(f'`{c}`' for c in cold) or 'none in this run'}. The others run warm."
        ),
        (
            "- ok: every run's integrity check passed (fio verify, read-back of written files, name counts, "
            "sha256, sizes, changes shown exactly)."
        ),
    ]
    for r in failed:
        details = [m.detail for c in r.configs for m in c.runs if m.detail]
        lines.append(f"- **{r.name} failed its check**: {'; '.join(details) or 'no detail recorded'}")
    return "\n".join(lines) + "\n"


def plot(record: BenchRecord, path: str) -> None:
    """A PNG: median ratio per workload and fastpass configuration, whiskers from the lowest to the highest
    round, cold workloads hatched; beside it, for workloads that time events, each configuration's median
    latency with a whisker up to the worst."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display needed, no pyplot state
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rated = [r for r in record.results if not any(c.latency_ms for c in r.configs)]
    timed = [r for r in record.results if any(c.latency_ms for c in r.configs)]
    fastpass = [c.name for c in record.configs if c.name != BIND]
    panels = [p for p in (rated, timed) if p]
    fig = Figure(figsize=(sum(max(6.0, 0.6 * len(p) * (len(fastpass) + 1) + 2) for p in panels), 4.5),
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    axes = iter(fig.subplots(1, len(panels), squeeze=False)[0])
    width = 0.8 / len(fastpass)
    colors = {name: f"C{i}" for i, name in enumerate(c.name for c in record.configs)}
    if rated:
        ax = next(axes)
        for i, name in enumerate(fastpass):
            got = [r.of(name) for r in rated]
            medians = [c.ratio_median for c in got]
            bars = ax.bar([x + i * width for x in range(len(rated))], medians, width, color=colors[name],
                          yerr=[[m - min(c.ratios) for m, c in zip(medians, got)],
                                [max(c.ratios) - m for m, c in zip(medians, got)]], capsize=3)  # fmt: skip
            for bar, r in zip(bars, rated):
                bar.set_hatch("//" if r.cold else "")
            ax.bar_label(bars, fmt="%.2f", padding=2, fontsize="small")
        ax.axhline(1.0, linestyle="--", color="black", linewidth=1)
        ax.set_xticks([x + width * (len(fastpass) - 1) / 2 for x in range(len(rated))], [r.name for r in rated],
                      rotation=45, ha="right")  # fmt: skip
        ax.set_ylabel("fastpass rate / bind mount rate, same workload\n(median of rounds; whiskers: min, max; higher is better)")
        handles = [Patch(color=colors[n], label=n) for n in fastpass]
        if any(r.cold for r in rated):
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="cold cache"))
        ax.legend(handles=handles, loc="best", fontsize="small")
    if timed:
        ax = next(axes)
        names = [c.name for c in record.configs]
        step = 0.8 / len(names)
        for i, name in enumerate(names):
            figures = [latency_figures(r.of(name)) for r in timed]
            bars = ax.bar([x + i * step for x in range(len(timed))], [f[0] for f in figures], step,
                          color=colors[name], yerr=[[0] * len(figures), [f[1] - f[0] for f in figures]], capsize=3,
                          label=name)  # fmt: skip
            ax.bar_label(bars, fmt="%.3g", padding=2, fontsize="small")
        ax.set_yscale("log")
        ax.set_xticks([x + step * (len(names) - 1) / 2 for x in range(len(timed))], [r.name for r in timed])
        ax.set_ylabel("latency, ms (median; whisker: max)")
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"fastpass {record.fastpass_version} vs bind mount\nLinux {record.machine.kernel}, "
                 f"{record.repeat} round(s), whiskers: min-max", fontsize="medium")  # fmt: skip
    fig.savefig(path, format="png", dpi=120)
