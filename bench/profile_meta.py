"""Where a fastpass worker's CPU goes on a metadata request, per opcode and per part.

Mounts fastpass over a temporary backing directory (`--transport dev
--passthrough off` by default: requests from /dev/fuse, every byte in
userspace), runs the "meta" round of `scale` (create + write 4 KiB + close +
stat + unlink) from `--clients` processes, and measures three passes of the
same loop on each worker count:

1. plain: CPU of every server process (/proc/PID/stat utime and stime of the
   supervisor, the workers and the watcher) and of the clients, per round; the
   FUSE requests per round and the handlers' mean time, by opcode, from
   `fastpass stats --json`;
2. perf (where `perf` is on PATH): the workers' on-CPU samples with kernel
   call chains, which split their system time by syscall (readv on /dev/fuse,
   the reply's write, each backing call) and their user time by library;
3. py-spy (where `py-spy` is on PATH): the workers' Python stacks with native
   leaves, which split the Python-level time by opcode and by part (decode,
   dispatch, journal, stats, reply, handler, shared-table locks, attribute
   cache, encode) and each syscall by the opcode that made it.

Each sampler's fractions are scaled to the CPU time /proc gave for the pass
without a sampler (samplers slow what they sample, and py-spy sees a thread in
a syscall far more often than it is there: the fractions are what they are
good for, perf's for the kernel, py-spy's for Python).  Then the same loop runs directly on
the backing directory: what the backing syscalls alone cost.

    python3 bench/profile_meta.py [--rounds 5000] [--workers 1 2] [--clients 1] [--json FILE] [-- MOUNT_OPTION...]

Run as root from the repository root.  Everything it mounts and starts is
unmounted and ended on the way out, Ctrl-C or failure included.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

FASTPASS = [sys.executable, "-m", "fastpass"]
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)

# One client: `rounds` meta rounds in its own directory; prints its user and system CPU in µs.
CLIENT = r"""
import os, resource, sys
d, n = sys.argv[1], int(sys.argv[2])
buf = b"x" * 4096
flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
for i in range(n):
    p = f"{d}/f{i}"
    fd = os.open(p, flags, 0o644)
    os.write(fd, buf)
    os.close(fd)
    os.stat(p)
    os.unlink(p)
r = resource.getrusage(resource.RUSAGE_SELF)
print(r.ru_utime * 1e6, r.ru_stime * 1e6)
"""

# The parts of a request, as py-spy's Python frames show them.  A sample is charged to the
# first rule that matches its innermost fastpass frame (file, function); the rest is "handler".
PARTS = [
    ("journal", "fastpass/shm/journal.py", ""),
    ("stats", "fastpass/shm/counters.py", ""),
    ("locks", "fastpass/shm/region.py", ""),
    ("attr cache", "fastpass/fs/attrcache.py", ""),
    ("encode", "fastpass/kernel/encode.py", ""),
    ("decode", "fastpass/kernel/opcodes.py", ""),
    ("creds", "fastpass/fs/context.py", "Credentials."),
    ("reply", "fastpass/worker.py", "_writer.<locals>.reply"),
]
# The modules of the inode and handle tables: a handler sample with one of them on its stack is theirs.
_TABLES = ("fastpass/fs/inodes.py", "fastpass/fs/inode_index.py", "fastpass/fs/slots.py", "fastpass/fs/handles.py")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")
_LIBC_USER = ("pthread_", "clock_gettime", "__memcpy", "__memmove", "__memset", "malloc", "free", "_int_", "cfree")
_SYSCALL_WRAPPER = re.compile(r"^(?:__GI___libc_|__GI___|__libc_|__)")


class Mount:
    """A fastpass mount that this script made, and everything it started; `close()` undoes all of it."""

    def __init__(self, top: str, workers: int, extra: list[str]):
        self.backing = os.path.join(top, f"backing-{workers}")
        self.mnt = os.path.join(top, f"mnt-{workers}")
        os.makedirs(self.backing)
        os.makedirs(self.mnt)
        self.log = os.path.join(top, f"server-{workers}.log")
        self.supervisor = 0
        self.options = " ".join(["--workers", str(workers), "--transport", "dev", "--passthrough", "off", *extra])

    def start(self) -> None:
        opts = self.options.split()
        r = subprocess.run([*FASTPASS, "mount", self.backing, self.mnt, "--log", self.log, *opts],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if r.returncode != 0 or not _mounted(self.mnt):
            raise RuntimeError(f"fastpass mount failed ({r.returncode}): {r.stderr}")
        self.supervisor = self.stats()["supervisor_pid"]

    def stats(self) -> dict:
        r = subprocess.run([*FASTPASS, "stats", self.mnt, "--json"], capture_output=True, text=True, timeout=30,
                           check=True)  # fmt: skip
        return json.loads(r.stdout)

    def pids(self) -> dict[str, list[int]]:
        s = self.stats()
        watcher = s["cache"]["watcher_pid"]
        return {"supervisor": [s["supervisor_pid"]], "workers": [w["pid"] for w in s["workers"] if w["alive"]],
                "watcher": [watcher] if watcher else []}  # fmt: skip

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
            self.supervisor = self.supervisor or self.stats()["supervisor_pid"]
        if _mounted(self.mnt):
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([*FASTPASS, "unmount", self.mnt], capture_output=True, timeout=20, check=False)
        if _mounted(self.mnt):
            _libc.umount2(os.fsencode(self.mnt), MNT_DETACH)
        deadline = time.monotonic() + 10
        while self.supervisor and _alive(self.supervisor) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.supervisor and _alive(self.supervisor):
            os.kill(self.supervisor, signal.SIGKILL)


def _mounted(path: str) -> bool:
    target = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split(b" ")[4] == target for line in f)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cpu_us(pid: int) -> tuple[float, float]:
    """User and system CPU of `pid`, µs (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) * TICK_US, int(fields[12]) * TICK_US


@contextlib.contextmanager
def started(procs: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """End what is still running of `procs` (ours) on the way out, whatever happened."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_clients(top: str, clients: int, rounds: int, uid: int | None = None) -> tuple[float, float, float]:
    """Run the loop from `clients` processes under `top` (as `uid`, root if None); wall seconds,
    client user and system µs."""
    dirs = []
    for i in range(clients):
        d = os.path.join(top, f"c{i}")
        os.makedirs(d, exist_ok=True)
        if uid is not None:
            os.chown(d, uid, uid)
        dirs.append(d)
    python = sys.executable if uid is None else "/usr/bin/python3"  # one another user may run
    t0 = time.monotonic()
    procs = [subprocess.Popen([python, "-c", CLIENT, d, str(rounds)], stdout=subprocess.PIPE, text=True,
                              user=uid, group=uid, extra_groups=[] if uid is not None else None)
             for d in dirs]  # fmt: skip
    with started(procs):
        outs = [p.communicate()[0] for p in procs]
    wall = time.monotonic() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a client failed: {[p.returncode for p in procs]}")
    user = sum(float(o.split()[0]) for o in outs)
    system = sum(float(o.split()[1]) for o in outs)
    return wall, user, system


def measured(m: Mount, clients: int, rounds: int, uid: int | None, samplers: tuple[list[str], ...] = ()) -> dict:
    """One pass of the loop on `m` while `samplers` (commands that stop on SIGINT) run: CPU of each
    server role and of the clients, µs per round; the request counts and handler time by opcode."""
    pids = m.pids()
    before_stats = m.stats()
    before = {role: [cpu_us(p) for p in ps] for role, ps in pids.items()}
    errs = [open(os.path.join(os.path.dirname(m.log), f"sampler-{i}.err"), "wb") for i in range(len(samplers))]  # noqa: SIM115
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err) for cmd, err in zip(samplers, errs, strict=True)]
    for err in errs:
        err.close()
    if procs:
        time.sleep(1.0)  # let them attach
    with started(procs):
        wall, cu, cs = run_clients(m.mnt, clients, rounds, uid)
        after = {role: [cpu_us(p) for p in ps] for role, ps in pids.items()}
        for p in procs:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=60)
    after_stats = m.stats()
    total = rounds * clients
    cpu = {}
    for role in pids:
        u = sum(a[0] - b[0] for a, b in zip(after[role], before[role], strict=True))
        s = sum(a[1] - b[1] for a, b in zip(after[role], before[role], strict=True))
        cpu[role] = (u / total, s / total)
    cpu["clients"] = (cu / total, cs / total)
    return {"rounds": total, "wall": wall, "rate": total / wall, "cpu": cpu,
            "ops": op_delta(before_stats, after_stats, total)}  # fmt: skip


def op_delta(before: dict, after: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """Requests per round and the handler's mean µs, by opcode, between two `stats` records."""
    old = {o["name"]: o for o in before["ops"]}
    out = {}
    for o in after["ops"]:
        b = old.get(o["name"], {"count": 0, "mean_us": 0.0})
        n = o["count"] - b["count"]
        if n > 0:
            out[o["name"]] = (n / rounds, (o["count"] * o["mean_us"] - b["count"] * b["mean_us"]) / n)
    return out


def perf_profile(path: str) -> tuple[collections.Counter, collections.Counter]:
    """Kernel samples by syscall (named by the libc wrapper that entered the kernel; "readv
    (sleep/wake)" where the read slept for the next request) and user samples by library, from
    `perf record -g` data."""
    text = subprocess.run(["perf", "script", "-i", path, "-F", "ip,sym,dso"], capture_output=True, text=True,
                          check=False).stdout  # fmt: skip
    kernel: collections.Counter = collections.Counter()
    user: collections.Counter = collections.Counter()
    for block in text.split("\n\n"):
        frames = [ln.split(None, 1)[1] for ln in block.strip().splitlines() if len(ln.split(None, 1)) == 2]
        if not frames:
            continue
        if "kernel.kallsyms" not in frames[0]:
            user[os.path.basename(frames[0].rsplit("(", 1)[-1].rstrip(")"))] += 1
            continue
        name = "other kernel (faults, interrupts)"
        for f in frames:
            if "kernel.kallsyms" not in f:
                if "libc.so" in f:
                    name = _SYSCALL_WRAPPER.sub("", f.split("+", 1)[0].split(" ", 1)[0]).removesuffix("64")
                break
        if name == "readv" and any(f.startswith("schedule ") for f in frames):
            name = "readv (sleep/wake)"
        kernel[name] += 1
    return kernel, user


def _frames(stack: str) -> list[tuple[str, str, str]]:
    out = []
    for f in stack.split(";"):
        hit = _FRAME.match(f)
        if hit:
            out.append((hit["func"], hit["file"], hit["line"] or ""))
    return out


def classify(stack: str) -> tuple[str, str, str, str]:
    """(opcode's handler or "-", part, syscall or "", innermost fastpass frame) for one py-spy
    sample with native leaves."""
    frames = _frames(stack)
    leaf_func, leaf_file, _ = frames[-1]
    syscall = ""
    if leaf_file.startswith("libc") and not leaf_func.startswith(_LIBC_USER):
        syscall = "?" if leaf_func.startswith("0x") else leaf_func.removeprefix("__libc_").removesuffix("64")
    py = [(fn, fl, ln) for fn, fl, ln in frames if fl.startswith("fastpass/")]
    where = py[-1] if py else ("?", "?", "")
    frame = f"{where[0]} ({where[1]}:{where[2]})"
    deeper = [fn for fn, fl, _ in frames[frames.index(where) + 1:] if fl.endswith(".py")] if py else []
    if deeper:  # the standard library's Python code it called (enum, struct...)
        frame += f" in {deeper[-1]}"
    at = next((i for i, (fn, _, _) in enumerate(py) if fn.endswith("dispatch")), None)
    if at is None:  # the loop between requests
        if any(fn == "Fs.sync" for fn, _, _ in py):
            return "-", "sync between requests", syscall, frame
        if where[0] in ("Worker.serve", "Worker._drain"):
            return "-", "kernel read" if syscall == "readv" else "serve loop", syscall, frame
        return "-", where[0], syscall, frame
    inner = py[at + 1:]
    if not inner:
        return "-", "dispatch", syscall, frame
    if "decode" in inner[0][0]:
        return "-", "decode", syscall, frame
    for part, file, func in PARTS:
        if inner[0][1] == file and (not func or func in inner[0][0]):
            return "-", part, syscall, frame
    part = "handler"
    for fn, fl, _ in inner[1:]:
        for name, file, func in PARTS:
            if fl == file and (not func or func in fn):
                part = name
    if part == "handler" and any(fl in _TABLES for _, fl, _ in inner[1:]):
        part = "inode/handle tables"
    return inner[0][0], part, syscall, frame


def pyspy_profile(path: str) -> collections.Counter:
    samples: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if stack:
                samples[classify(stack)] += int(n)
    return samples


def backing_alone(top: str, clients: int, rounds: int, uid: int | None, runs: int = 3) -> list[dict]:
    """The loop on a plain directory, `runs` times (the backing's own cost varies with the load
    others put on the disk): rounds/s and the clients' CPU per round of each run."""
    out = []
    for i in range(runs):
        wall, u, s = run_clients(os.path.join(top, f"alone-{i}"), clients, rounds, uid)
        total = rounds * clients
        out.append({"rate": total / wall, "cpu": (u / total, s / total)})
    return out


def profile(top: str, workers: int, args: argparse.Namespace) -> dict:
    m = Mount(top, workers, args.mount_options)
    try:
        m.start()
        run_clients(m.mnt, args.clients, 300, args.client_uid)  # warm: the first requests fill tables and caches
        result: dict = {"workers": workers, "options": m.options, "plain": measured(m, args.clients, args.rounds, args.client_uid)}
        wpids = ",".join(str(p) for p in m.pids()["workers"])
        if shutil.which("perf") and not args.no_perf:
            data = os.path.join(top, f"perf-{workers}.data")
            cmd = ["perf", "record", "-q", "-F", str(args.rate), "-g", "-p", wpids, "-o", data]
            result["perf_pass"] = measured(m, args.clients, args.rounds, args.client_uid, (cmd,))
            kernel, user = perf_profile(data)
            result["perf"] = {"kernel": dict(kernel), "user": dict(user)}
        if shutil.which("py-spy") and not args.no_py_spy:
            samples: collections.Counter = collections.Counter()
            raws = [os.path.join(top, f"pyspy-{workers}-{pid}.txt") for pid in m.pids()["workers"]]
            cmds = tuple(["py-spy", "record", "--native", "-r", str(args.rate), "-p", str(pid), "-f", "raw", "-o", raw]
                         for pid, raw in zip(m.pids()["workers"], raws, strict=True))  # one pid a sampler
            result["pyspy_pass"] = measured(m, args.clients, args.rounds, args.client_uid, cmds)
            for raw in raws:
                if os.path.exists(raw):
                    samples += pyspy_profile(raw)
            if sum(samples.values()) < args.rounds / 10:  # py-spy stopped early: say why
                for i in range(len(cmds)):
                    with open(os.path.join(top, f"sampler-{i}.err"), errors="replace") as f:
                        print(f"py-spy took {sum(samples.values())} samples: {f.read()[-2000:]}", file=sys.stderr)
            result["pyspy"] = [[*k, v] for k, v in samples.items()]
        return result
    finally:
        m.close()


def table(result: dict) -> str:
    """The report of one worker count, as Markdown."""
    plain = result["plain"]
    lines = [f"### {result['workers']} worker(s): `{result['options']}`", ""]
    lines.append(f"{plain['rate']:,.0f} rounds/s; CPU per round, µs (user + system):")
    lines.append("")
    lines.append("| process | user | system |")
    lines.append("|---|--:|--:|")
    for role, (u, s) in plain["cpu"].items():
        lines.append(f"| {role} | {u:.1f} | {s:.1f} |")
    lines.append("")
    ops = plain["ops"]
    lines.append("| opcode | requests/round | handler mean µs (stats) |")
    lines.append("|---|--:|--:|")
    for name, (per, mean) in sorted(ops.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
        lines.append(f"| {name} | {per:.2f} | {mean:.1f} |")
    lines.append(f"| all | {sum(p for p, _ in ops.values()):.2f} | |")
    if "perf" in result and "pyspy" in result:
        lines += ["", *breakdown(result)]
    return "\n".join(lines)


COMMON_SYSCALLS = {"readv": "kernel read", "readv (sleep/wake)": "kernel read (sleep/wake)", "write": "reply write",
                   "writev": "reply write"}  # fmt: skip
HANDLER_PARTS = ["inode/handle tables", "locks", "attr cache", "encode", "handler"]


def _opcode(handler: str) -> str:
    return handler.removesuffix("_submit").rstrip("_").upper()


def breakdown(result: dict) -> list[str]:
    """µs per request by opcode and part: perf's system time of the workers by syscall (each
    backing syscall split between the opcodes that made it as py-spy saw them), py-spy's Python
    samples scaled to the workers' user time, both times from the pass without a sampler."""
    ops = result["plain"]["ops"]
    k, libs = result["perf"]["kernel"], result["perf"]["user"]
    ks = sum(k.values()) or 1
    user, system = result["plain"]["cpu"]["workers"]  # the pass without a sampler
    sys_us = {name: system * n / ks for name, n in k.items()}
    rows = [tuple(r) for r in result["pyspy"]]
    by_syscall: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    python: collections.Counter = collections.Counter()
    lines: collections.Counter = collections.Counter()
    for handler, part, sc, frame, n in rows:
        if sc:
            by_syscall[sc][_opcode(handler)] += n
        else:
            python[(_opcode(handler), part)] += n
            lines[frame] += n
    py_n = sum(python.values()) or 1
    cost: collections.Counter = collections.Counter()  # (opcode or "-", part) -> µs per round
    by_call: collections.Counter = collections.Counter()  # (opcode, syscall) -> µs per round
    for key, n in python.items():
        cost[key] += user * n / py_n
    for name, us in sys_us.items():
        if name in COMMON_SYSCALLS:
            cost[("-", COMMON_SYSCALLS[name])] += us
            continue
        split = by_syscall.get(name)
        if not split or sum(split.values()) == 0:
            cost[("-", f"other system: {name}")] += us
            continue
        for op, n in split.items():
            cost[(op, "backing syscalls" if op != "-" else f"other system: {name}")] += us * n / sum(split.values())
            if op != "-":
                by_call[(op, name)] += us * n / sum(split.values())
    out = ["Per opcode, µs per request (workers' CPU; handler parts in Python, backing syscalls in the kernel):", "",
           ("| opcode | req/round | stats mean | tables | locks | attr cache | encode | other Python | backing syscalls | "
           "total | C server |"), "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for op, (per, mean) in sorted(ops.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
        parts = [cost[(op, p)] / per for p in HANDLER_PARTS]
        syscalls = cost[(op, "backing syscalls")] / per
        out.append(f"| {op} | {per:.2f} | {mean:.1f} | " + " | ".join(f"{x:.1f}" for x in parts)
                   + f" | {syscalls:.1f} | {sum(parts) + syscalls:.1f} | {syscalls:.1f} |")  # fmt: skip
    requests = sum(per for per, _ in ops.values())
    common = sorted(((p, us) for (op, p), us in cost.items() if op == "-"), key=lambda kv: -kv[1])
    out += ["", f"Every request ({requests:.2f} a round), µs per request:", "", "| part | µs/request | C server |",
            "|---|--:|--:|"]  # fmt: skip
    for part, us in common:
        c_server = us / requests if part.startswith(("kernel read", "reply write")) else 0.0
        if us / requests >= 0.05:
            out.append(f"| {part} | {us / requests:.2f} | {c_server:.2f} |")
    unassigned = sum(us for (op, p), us in cost.items() if op not in ops and op != "-")
    if unassigned:
        out.append(f"| (handlers of opcodes stats did not count) | {unassigned / requests:.2f} | 0 |")
    out += ["", "Backing syscalls by opcode (kernel time), µs per request:", "", "| opcode | syscall | µs/request |",
            "|---|---|--:|"]  # fmt: skip
    for (op, name), us in sorted(by_call.items(), key=lambda kv: -kv[1]):
        if op in ops and us / ops[op][0] >= 0.1:
            out.append(f"| {op} | {name} | {us / ops[op][0]:.2f} |")
    out += ["", "Innermost fastpass Python frames, workers' user time, µs per round:", "", "| frame | µs/round |",
            "|---|--:|"]  # fmt: skip
    out += [f"| {frame} | {user * n / py_n:.1f} |" for frame, n in lines.most_common(25)]
    total = sum(cost.values())
    out += ["", (f"Sum of the parts: {total:.0f} µs a round; the workers' CPU in the pass without a sampler: "
            f"{user + system:.0f} µs ({user:.0f} user, {system:.0f} system); from {ks} perf samples of the kernel "
            f"and {py_n} py-spy samples of Python code.")]  # fmt: skip
    lib_n = sum(libs.values()) or 1
    out += ["", "The workers' user time by library (perf): " + ", ".join(
        f"{name} {100 * n / lib_n:.0f}%" for name, n in sorted(libs.items(), key=lambda kv: -kv[1])[:5]) + "."]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5000, help="rounds per client and pass (default 5000)")
    ap.add_argument("--clients", type=int, default=1, help="client processes (default 1)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    ap.add_argument("--rate", type=int, default=1000, help="samples per second of perf and py-spy (default 1000)")
    ap.add_argument("--client-uid", type=int, help="run the clients as this uid and gid (with `-- --allow-other`: "
                    "the workers switch credentials for them)")  # fmt: skip
    ap.add_argument("--no-perf", action="store_true")
    ap.add_argument("--no-py-spy", action="store_true")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("mount_options", nargs="*", help="after --: more `fastpass mount` options")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind (and clean up) as for Ctrl-C
    top = tempfile.mkdtemp(prefix="fastpass-profile-")
    os.chmod(top, 0o755)  # --client-uid: the clients reach their directories through it
    results = []
    try:
        for workers in args.workers:
            results.append(profile(top, workers, args))
            print(table(results[-1]), "\n", flush=True)
        alone = backing_alone(top, args.clients, args.rounds, args.client_uid)
        print("### the same loop on a directory of the backing filesystem\n\n| run | rounds/s | clients' user µs/round | "
              "clients' system µs/round |\n|---|--:|--:|--:|")  # fmt: skip
        for i, run in enumerate(alone):
            print(f"| {i + 1} | {run['rate']:,.0f} | {run['cpu'][0]:.1f} | {run['cpu'][1]:.1f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": results, "backing": alone}, f, indent=1)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
