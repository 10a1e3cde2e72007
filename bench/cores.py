"""Scaling across cores in one call: rate and server CPU per round by worker count, transport
and data path, for a machine that is at hand only for minutes.

    python3 bench/cores.py [--workers 1 4 8 16] [--seconds 3] [--clients N] [--json FILE]

(as root, from the repository root).  For each loop of `ab_meta.py` (meta: create + write
4 KiB + close + stat + unlink; openread: open + read 4 KiB + close of cached files), each
transport (/dev/fuse, and FUSE-over-io_uring where the kernel has it) and passthrough on and
off, each worker count gets a fresh mount of this tree and --clients processes (default: one
per CPU) for --seconds.  Each line: rounds/s, the server's CPU per round (workers and watcher,
from /proc) and the workers' waits for a shared-table lock another worker held (`fastpass
stats`).  CPU per round is what carries from machine to machine: with no contention, N
workers serve about N / (CPU per round) rounds a second.  The defaults take about 3 minutes
on 16 CPUs; counts above twice the CPUs are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ab_meta import LOOPS, measure  # type: ignore[import-not-found]  # bench/ is this script's path

from fastpass.transport.entries import enabled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    args = parser.parse_args()
    counts = [w for w in args.workers if w <= 2 * (os.cpu_count() or 1)]
    transports = ["dev"] + (["uring"] if enabled() is not None else [])
    tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    print(f"{args.clients} clients, {args.seconds:g} s each; server CPU per round from /proc", flush=True)
    for loop in LOOPS:
        for transport in transports:
            for passthrough in ("on", "off"):
                for workers in counts:
                    rate, us, waits = measure(sys.executable, tree, workers, args.clients, args.seconds, transport,
                                              LOOPS[loop], ("--passthrough", passthrough))  # fmt: skip
                    rows.append({"loop": loop, "transport": transport, "passthrough": passthrough,
                                 "workers": workers, "rounds_per_s": rate, "server_us_per_round": us,
                                 "lock_waits": waits})  # fmt: skip
                    print(f"{loop:8s} {transport:5s} passthrough {passthrough:3s} {workers:2d} workers: "
                          f"{rate:9,.0f} rounds/s, {us:7.1f} us a round, {waits:,} lock waits", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"clients": args.clients, "seconds": args.seconds, "cpus": os.cpu_count(), "rows": rows}, f,
                      indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
