"""A `find` + `stat` walk of millions of files through fastpass, against a bind mount of the same tree.

The inode table has no fixed size (docs/operations.md, "The inode table"): a walk of a
tree larger than any table made before the fork must finish with no error,
and show the same names and stat results as the bind mount.  This builds the
tree once (`--files` empty files, 1,000 a directory, under `--dir`; kept for
the next run unless `--remove`), warms the backing's caches with one walk of
the bind mount, then times one walk of the bind mount and one of a fresh
fastpass mount (`find MNT -printf`, which lstat()s every name), compares
their outputs, and reports fastpass's figures: live inodes, table size,
prunes, forgets, errors, each worker's RSS (private and shared) and the
workers' CPU time per file.

    python3 bench/walk.py [--files 3000000] [--workers 2] [--max-inodes N] [--dir /var/tmp/fastpass-walk]

Run as root from the repository root.  Needs disk for the tree (about 1 KiB
of inode table and directory a file on ext4) and memory for the kernel to
cache its inodes twice (the backing's and the mount's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

PER_DIR = 1000
FASTPASS = [sys.executable, "-m", "fastpass"]


def build(top: str, files: int) -> None:
    """`files` empty files in directories of PER_DIR under `top`, unless a previous run made them."""
    marker = os.path.join(top, f".built-{files}")
    if os.path.exists(marker):
        return
    subprocess.run(["rm", "-rf", top], check=True)
    os.makedirs(top)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for d in range((files + PER_DIR - 1) // PER_DIR):
        path = os.path.join(top, f"d{d:05d}")
        os.mkdir(path)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(min(PER_DIR, files - d * PER_DIR)):
                os.close(os.open(f"f{i:04d}", flags, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
    open(marker, "w").close()


def walk(mnt: str) -> tuple[float, str, int, str]:
    """(seconds, sha256 of find's output, lines, stderr) of one find + lstat walk."""
    start = time.perf_counter()
    r = subprocess.run(["find", mnt, "-printf", "%P %y %i %n %s %T@ %U %G\n"], capture_output=True, check=False)
    took = time.perf_counter() - start
    return took, hashlib.sha256(r.stdout).hexdigest(), r.stdout.count(b"\n"), r.stderr.decode()[-2000:]


def usage(pid: int) -> dict[str, float]:
    """A process's RSS, its private (anon) and shared (shmem) parts and its peak, in KiB, and the CPU
    seconds it has used (user + system)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem", "VmHWM"):
                out[key] = int(value.split()[0])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    out["cpu_s"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3_000_000)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--max-inodes", default="0", help="fastpass's --max-inodes (0: no bound)")
    parser.add_argument("--dir", default="/var/tmp/fastpass-walk", help="where the tree is built and kept")
    parser.add_argument("--remove", action="store_true", help="remove the tree afterwards")
    options = parser.parse_args()
    top = os.path.join(options.dir, "tree")
    t0 = time.perf_counter()
    build(top, options.files)
    report: dict[str, object] = {"files": options.files, "build_s": round(time.perf_counter() - t0, 1),
                                 "workers": int(options.workers), "max_inodes": int(options.max_inodes)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fastpass-walk-") as tmp:
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        subprocess.run(["mount", "--bind", top, mnt], check=True)
        try:
            walk(mnt)  # the backing's inodes into the cache: both timed walks find them there
            bind_s, bind_sum, bind_lines, bind_err = walk(mnt)
        finally:
            subprocess.run(["umount", mnt], check=True)
        report.update(bind_s=round(bind_s, 1), lines=bind_lines)
        subprocess.run([*FASTPASS, "mount", top, mnt, "--workers", options.workers, "--max-inodes",
                        options.max_inodes, "--log", os.path.join(tmp, "server.log")], check=True)  # fmt: skip
        try:
            fast_s, fast_sum, fast_lines, fast_err = walk(mnt)
            stats = json.loads(subprocess.run([*FASTPASS, "stats", mnt, "--json"], capture_output=True,
                                              check=True).stdout)  # fmt: skip
            workers = [{"pid": w["pid"], **usage(w["pid"])} for w in stats["workers"] if w["alive"]]
        finally:
            subprocess.run([*FASTPASS, "unmount", mnt], check=False)
        ops = {o["name"]: o["count"] for o in stats["ops"]}
        report.update(
            fastpass_s=round(fast_s, 1), ratio=round(fast_s / bind_s, 2), same_output=fast_sum == bind_sum,
            fastpass_lines=fast_lines, find_errors=(fast_err or bind_err).splitlines()[:5], errors=stats["errors"],
            inodes=stats["inodes"], inode_slots=stats["inode_slots"], table_mib=round(stats["inode_slots"] * 200 >> 20),
            pruned=stats["pruned"], forgets=ops.get("FORGET", 0) + ops.get("BATCH_FORGET", 0),
            lookups=ops.get("LOOKUP", 0), readdirplus=ops.get("READDIRPLUS", 0), worker_usage=workers,
            cpu_us_per_file=round(sum(w["cpu_s"] for w in workers) / options.files * 1e6, 1),
        )  # fmt: skip
    if options.remove:
        subprocess.run(["rm", "-rf", options.dir], check=True)
    print(json.dumps(report, indent=1))
    return 0 if report["same_output"] and not report["errors"] and not report["find_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
