"""Every workload by name, and the named suites."""

from __future__ import annotations

from fastpass.bench.pyworkloads import PY_WORKLOADS
from fastpass.bench.workloads import FIO_WORKLOADS, Workload

WORKLOADS: dict[str, Workload] = {w.name: w for w in (*FIO_WORKLOADS, *PY_WORKLOADS)}

SUITES: dict[str, list[str]] = {
    # The demo: a short look at each kind of work.  Not stat-tree (50,000 files to lay out first) nor
    # oob-latency (its point is comparing --cache modes with --variant, see README).
    "quick": ["seqread", "seqwrite", "randread", "randread-direct", "metadata", "openread", "readdir"],
    "full": list(WORKLOADS),
}
