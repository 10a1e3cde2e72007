"""fastpass over a slow backing: the io_uring path against plain when every name lookup waits.

A local disk answers a lookup in microseconds, so it cannot show what a
network filesystem's round trips cost a server that resolves names one at a
time.  Here the backing is itself a fastpass mount whose `SlowLookups` filter
holds each LOOKUP for `--ms` milliseconds (on `--lower-workers` workers, as
a server with that many requests in flight would), and `fastpass bench`
compares the two I/O paths of the mount above it in one run:

    python3 -m fastpass.bench.slow_backing [--ms 1] [--lower-workers 8] [--repeat 3] [--workloads readdir-cold]

READDIRPLUS resolves its entries in one batch on the ring (fastpass.fs.dirs),
so its lookups wait together; on plain syscalls they wait one after another.
It lives in the package because the lower server loads its filter by name
(`fastpass.bench.slow_backing:SlowLookups`), from wherever fastpass is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

from fastpass.filters.api import Args, Context, Dirent, Filter


class SlowLookups(Filter):
    """Every LOOKUP waits `ms` milliseconds before it reaches the backing, and listings carry
    names only (as a network filesystem's often do), so each name costs a lookup."""

    def __init__(self, ms: str = "1"):
        self.seconds = float(ms) / 1000

    def pre_lookup(self, ctx: Context, args: Args) -> None:
        time.sleep(self.seconds)

    def post_readdir(self, ctx: Context, args: Args, result: list[Dirent]) -> list[Dirent]:
        return [dataclasses.replace(d, entry=None) for d in result]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ms", default="1", help="milliseconds each lookup of the backing waits")
    parser.add_argument("--lower-workers", default="8", help="workers of the slow backing's server")
    parser.add_argument("--repeat", default="3")
    parser.add_argument("--workloads", default="readdir-cold")
    options = parser.parse_args()
    fastpass = [sys.executable, "-m", "fastpass"]
    with tempfile.TemporaryDirectory(prefix="fastpass-slow-") as tmp:
        backing, lower = os.path.join(tmp, "backing"), os.path.join(tmp, "slow")
        os.mkdir(backing)
        os.mkdir(lower)
        subprocess.run([*fastpass, "mount", backing, lower, "--workers", options.lower_workers,
                        "--filter", f"fastpass.bench.slow_backing:SlowLookups:ms={options.ms}"], check=True)  # fmt: skip
        try:
            return subprocess.run([*fastpass, "bench", lower, "--workloads", options.workloads, "--repeat",
                                   options.repeat, "--io", "plain", "--variant", "uring=--io uring"], check=False).returncode  # fmt: skip
        finally:
            subprocess.run([*fastpass, "unmount", lower], check=True)


if __name__ == "__main__":
    sys.exit(main())
