"""Server CPU per metadata round, two or more fastpass trees against each other, alternating.

    python3 bench/ab_meta.py --rounds 8 --seconds 2 old=/path/to/old/tree new=.
    python3 bench/ab_meta.py --workers 2 --clients 2 old=PYTHON:/old new=.
    python3 bench/ab_meta.py --loop openread old=/old new=.

(as root).  Each NAME=[PYTHON:]TREE is mounted in turn (`PYTHONPATH=TREE PYTHON -m fastpass
mount`, --transport dev (or --transport's) --passthrough off, so every request is served in userspace), and
--clients processes loop create + write 4 KiB + close + stat + unlink for --seconds (`--loop
openread`: open + read 4 KiB + close of 100 files made beforehand, kept in cache).  The CPU
time of the workers and the watcher (from /proc/PID/stat) over the rounds the clients made is
the server's CPU per round.  The trees alternate, --rounds times, because a shared machine
drifts by more than the differences looked for: compare the medians, in the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def openread(directory: str, seconds: float) -> int:
    """Open + read + close rounds of the files `_files` made, until `seconds` have passed; how many."""
    paths = [f"{directory}/r{i}" for i in range(100)]
    end = time.monotonic() + seconds
    done = 0
    while time.monotonic() < end:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
        done += 100
    return done


def _files(directory: str) -> None:
    for i in range(100):
        with open(f"{directory}/r{i}", "wb") as f:
            f.write(b"x" * 4096)


def meta(directory: str, seconds: float) -> int:
    """Meta rounds until `seconds` have passed; how many."""
    data = b"x" * 4096
    end = time.monotonic() + seconds
    done = 0
    while time.monotonic() < end:
        for i in range(100):
            path = f"{directory}/f{os.getpid()}-{i}"
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)
            os.stat(path)
            os.unlink(path)
        done += 100
    return done


LOOPS = {"meta": meta, "openread": openread}


def measure(python: str, tree: str, workers: int, clients: int, seconds: float, transport: str,
            loop: Callable[[str, float], int], options: Sequence[str] = ("--passthrough", "off"),
            ) -> tuple[float, float, int]:  # fmt: skip
    """(rounds/s, server µs a round, the workers' waits for a lock another held) of one mount of
    `tree` with `options`."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    with tempfile.TemporaryDirectory() as base:
        backing, mnt = f"{base}/b", f"{base}/m"
        os.mkdir(backing)
        os.mkdir(mnt)
        fastpass = [python, "-m", "fastpass"]
        subprocess.run([*fastpass, "mount", backing, mnt, "-w", str(workers), *options, "--transport", transport],
                       env=env, check=True)  # fmt: skip
        try:
            record = json.loads(subprocess.run([*fastpass, "stats", mnt, "--json"], env=env, check=True,
                                               capture_output=True, text=True).stdout)  # fmt: skip
            pids = [w["pid"] for w in record["workers"]] + [p for p in [record["cache"]["watcher_pid"]] if p]
            if loop is openread:
                _files(mnt)
            loop(mnt, 0.5)  # warm
            before = sum(_cpu(p) for p in pids)
            with tempfile.TemporaryDirectory() as counts:
                children = []
                for k in range(clients):
                    pid = os.fork()
                    if pid == 0:
                        code = 1
                        try:
                            with open(f"{counts}/{k}", "w") as f:
                                f.write(str(loop(mnt, seconds)))
                            code = 0
                        finally:
                            os._exit(code)
                    children.append(pid)
                for pid in children:
                    os.waitpid(pid, 0)
                spent = sum(_cpu(p) for p in pids) - before
                rounds = 0
                for k in range(clients):
                    with open(f"{counts}/{k}") as f:
                        rounds += int(f.read())
            after = json.loads(subprocess.run([*fastpass, "stats", mnt, "--json"], env=env, check=True,
                                              capture_output=True, text=True).stdout)  # fmt: skip
            waits = sum(w.get("lock_waits", 0) for w in after["workers"]) - sum(
                w.get("lock_waits", 0) for w in record["workers"])
        finally:
            subprocess.run([*fastpass, "unmount", mnt], env=env, check=True)
    return rounds / seconds, spent / rounds * 1e6, waits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", metavar="NAME=[PYTHON:]TREE")
    parser.add_argument("--rounds", type=int, default=6, help="alternations (default 6)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement (default 2)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--transport", choices=["dev", "uring"], default="dev")
    parser.add_argument("--loop", choices=["meta", "openread"], default="meta")
    args = parser.parse_args()
    trees = []
    for spec in args.trees:
        name, _, where = spec.partition("=")
        python, _, tree = where.rpartition(":")
        trees.append((name, python or sys.executable, tree))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in trees}
    for r in range(args.rounds):
        for name, python, tree in trees:
            rate, us, _ = measure(python, tree, args.workers, args.clients, args.seconds, args.transport,
                                  LOOPS[args.loop])  # fmt: skip
            results[name].append((rate, us))
            print(f"round {r + 1} {name}: {rate:8.0f} rounds/s, server {us:6.1f} us a round", flush=True)
    for name, got in results.items():
        print(f"{name}: median {statistics.median(u for _, u in got):.1f} us a round, "
              f"{statistics.median(r for r, _ in got):.0f} rounds/s ({len(got)} mounts)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
