"""A bench record as a Markdown report and as a chart of the ratios.

Both are made from the record alone (the JSON `--json` writes decodes to the
same struct), so a report can be redrawn later from a saved run.
"""

from __future__ import annotations

import datetime

from fastpass.bench.runner import BenchRecord, WorkloadResult


def num(value: float) -> str:
    """Throughputs span 0.5 MB/s to 500,000 IOPS: no decimals once they would be noise."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _row(r: WorkloadResult) -> str:
    fp = [p.fastpass.value for p in r.pairs]
    bind = [p.bind.value for p in r.pairs]
    cells = [f"`{r.label}`", r.description, r.unit, num(r.fastpass_median), num(min(fp)), num(max(fp)),
             num(r.bind_median), num(min(bind)), num(max(bind)), f"{r.ratio_median:.2f}",
             "yes" if r.cold else "no", "yes" if r.ok else "**NO**"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def markdown(record: BenchRecord) -> str:
    m = record.machine
    started = datetime.datetime.fromtimestamp(record.started, datetime.UTC)
    n = record.negotiated
    protocol = (f"7.{n.minor} (kernel offered {n.kernel_major}.{n.kernel_minor}); flags: "
                f"{', '.join(f'`{f}`' for f in n.flags) or 'none'}") if n else "not recorded"  # fmt: skip
    cold = sorted({r.name for r in record.results if r.cold})
    failed = [r for r in record.results if not r.ok]
    lines = [
        "# fastpass bench: fastpass against a bind mount of the same directory",
        "",
        (
            f"- Run: {started:%Y-%m-%d %H:%M} UTC, {record.elapsed:.0f} s; {record.repeat} round(s) per workload, "
            f"--size {record.size_mb} MB, --seconds {record.seconds:g}"
        ),
        f"- Machine: {m.cpu_model or 'unknown CPU'}, {m.cpus} CPUs, {m.memory_gib:g} GiB memory, Python {m.python}",
        f"- Kernel: {m.kernel}",
        f"- fastpass: {record.fastpass_version}",
        f"- Mount options: {' '.join(f'`{o}`' for o in record.mount_options) or 'defaults'}",
        *(
            f"- Variant `{v}`: {' '.join(f'`{o}`' for o in opts) or 'no more options'}"
            for v, opts in record.variants.items()
        ),
        f"- FUSE protocol negotiated: {protocol}",
        "",
        "| workload | what | unit | fastpass median | min | max | bind median | min | max | ratio | cold | ok |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|:-:|:-:|",
        *(_row(r) for r in record.results),
        "",
        "Notes:",
        "",
        (
            "- ratio = fastpass / bind, computed per pair of runs (one on each mount, in alternating order) "
            "and the median taken over the pairs. Every unit is higher-is-better, so a ratio above 1 means "
            "fastpass was faster than the kernel's own bind mount of the same directory."
        ),
        "- min and max are over the rounds; with one round they equal the median.",
        (
            f"- Cold workloads (page cache, dentries and inodes dropped before every run): "
            f"{', '.join(f'`{c}`' for c in cold) or 'none in this run'}. The others run warm."
        ),
        "- ok: every run's integrity check passed (fio verify, read-back of written files, name counts, sha256).",
    ]
    for r in failed:
        details = [m.detail for p in r.pairs for m in (p.fastpass, p.bind) if m.detail]
        lines.append(f"- **{r.label} failed its check**: {'; '.join(details) or 'no detail recorded'}")
    return "\n".join(lines) + "\n"


def plot(record: BenchRecord, path: str) -> None:
    """A PNG bar chart: median ratio per workload, whiskers from the lowest to the highest pair."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display needed, no pyplot state
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    results = record.results
    medians = [r.ratio_median for r in results]
    lows = [r.ratio_median - min(p.ratio for p in r.pairs) for r in results]
    highs = [max(p.ratio for p in r.pairs) - r.ratio_median for r in results]
    fig = Figure(figsize=(max(6.0, 0.8 * len(results) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = ["tab:blue" if r.cold else "tab:orange" for r in results]
    bars = ax.bar([r.label for r in results], medians, yerr=[lows, highs], capsize=4, color=colors)
    ax.bar_label(bars, fmt="%.2f", padding=2)
    ax.axhline(1.0, linestyle="--", color="black", linewidth=1)
    ax.set_ylabel("fastpass / bind (higher is better)")
    ax.set_title(f"fastpass {record.fastpass_version} vs bind mount\nLinux {record.machine.kernel}, "
                 f"{record.repeat} round(s), whiskers: min-max", fontsize="medium")  # fmt: skip
    kinds = {r.cold for r in results}
    if len(kinds) > 1:
        ax.legend(handles=[Patch(color="tab:orange", label="warm"), Patch(color="tab:blue", label="cold cache")],
                  loc="best", fontsize="small")  # fmt: skip
    ax.tick_params(axis="x", labelrotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.savefig(path, format="png", dpi=120)
