"""Benchmark workloads: each measures one directory and returns a throughput.

A workload works in its own subdirectory, `<dir>/<name>`, of the directory
it measures.  How much a run does (`Load`: --size, --seconds, --clients) is
the same for every workload of a bench.  `prepare` lays out its input on the backing directory before
any measurement, so every mount compared reads the same bytes; `run`
measures through one mount (and is told the backing directory that mount
serves, for workloads that change it behind the mount's back); `reset`
removes what a run wrote, so each run starts alike.  Every workload that
writes also verifies what it wrote (fio verify, or checksums), so a fast but
wrong server cannot score.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

import msgspec


class Load(msgspec.Struct, frozen=True):
    """How much each run does: the bench's --size, --seconds and --clients."""

    size_mb: int  # data size, for workloads whose input scales with it
    seconds: float  # duration of time-based workloads
    clients: int  # processes at once, for workloads run by many (see Workload.processes)


class Measurement(msgspec.Struct):
    value: float  # in `unit`, higher is better
    unit: str
    ok: bool  # integrity verified (or nothing written)
    detail: str = ""
    # Workloads that time single events (oob-latency): each event's latency in ms, in the order
    # they happened.  `value` is then 1000 / their median, so that it too is higher-is-better.
    latency_ms: list[float] = []


@dataclass(frozen=True)
class Workload:
    """The interface every workload follows (fio ones below, Python ones in pyworkloads)."""

    name: str
    description: str
    writes: bool = False  # reset between runs
    cold: bool = False  # page cache dropped before each run (needs root)

    def home(self, directory: str) -> str:
        return os.path.join(directory, self.name)

    def processes(self, clients: int) -> int:
        """How many processes a run uses at once with --clients `clients`: one, unless the workload says."""
        return 1

    def prepare(self, backing: str, load: Load) -> None:
        os.makedirs(self.home(backing), exist_ok=True)

    def run(self, directory: str, backing: str, load: Load) -> Measurement:
        """Measure through the mount at `directory`, which serves `backing`."""
        raise NotImplementedError

    def fresh(self, directory: str) -> str:
        """A new directory for one run's output.

        `reset` removes runs in the backing, behind the mounts' backs, while the
        kernel may still cache fastpass's entries for a second: a name used again
        could resolve to the removed file.  Run names are never reused.
        """
        path = os.path.join(self.home(directory), f"run-{time.time_ns()}")
        os.makedirs(path)
        return path

    def reset(self, backing: str) -> None:
        """Remove what runs wrote (their `fresh` directories); inputs stay."""
        with os.scandir(self.home(backing)) as entries:
            for entry in entries:
                if entry.name.startswith("run-"):
                    shutil.rmtree(entry.path)


@dataclass(frozen=True)
class FioWorkload(Workload):
    rw: str = "read"
    bs: str = "1M"
    numjobs: int = 1
    direct: bool = False
    mixread: int = 0  # percentage of reads for rw=randrw
    ioengine: str = "psync"
    max_mb: int = 1 << 20  # writes run once over the file, then verify: 4 KiB ones get a smaller file

    def processes(self, clients: int) -> int:
        """fio's own jobs: fixed per workload, not --clients."""
        return self.numjobs

    def prepare(self, backing: str, load: Load) -> None:
        super().prepare(backing, load)
        if not self.writes or self.rw == "randrw":
            self._fio(self.home(backing), load.size_mb, 1.0, "--create_only=1")

    def run(self, directory: str, backing: str, load: Load) -> Measurement:
        # randrw rewrites blocks of its laid-out files in place; other writers start empty
        where = self.fresh(directory) if self.writes and self.rw != "randrw" else self.home(directory)
        out = self._fio(where, load.size_mb, load.seconds)
        job = out["jobs"][0]
        ok = job.get("error", 0) == 0
        if self.bs == "4k":
            return Measurement(job["read"]["iops"] + job["write"]["iops"], "IOPS", ok)
        side = job["write"] if self.writes else job["read"]
        return Measurement(side["bw_bytes"] / 1e6, "MB/s", ok)

    def _fio(self, directory: str, size_mb: int, seconds: float, *more: str) -> dict:
        args = [
            "fio", "--output-format=json", f"--name={self.name}", f"--directory={directory}",
            f"--filename_format={self.name}.$jobnum", f"--rw={self.rw}", f"--bs={self.bs}",
            f"--size={max(1, min(size_mb, self.max_mb) // self.numjobs)}M", f"--numjobs={self.numjobs}",
            "--group_reporting", f"--direct={int(self.direct)}", f"--ioengine={self.ioengine}",
            # fio's default drops the file's page cache before a job: on the bind mount that is the
            # backing's cache, through FUSE only the mount's own, so warm runs would not be alike.
            "--invalidate=0", *more,
        ]  # fmt: skip
        if self.rw == "randrw":
            args.append(f"--rwmixread={self.mixread}")
        if self.writes:
            # Written blocks carry checksums that are read back and checked.
            args += ["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"]
            if self.rw == "write":
                args.append("--end_fsync=1")
        if self.rw == "randrw":  # a mix runs for a fixed time, checking each 1024 blocks it writes as it goes
            args += ["--verify_backlog=1024", f"--runtime={seconds}", "--time_based"]
        elif not self.writes:  # other writers run once over their file (verify needs that); reads for a time
            args += [f"--runtime={seconds}", "--time_based"]
        r = subprocess.run(args, capture_output=True, text=True, check=False)
        if r.returncode != 0 and "verify" not in r.stderr + r.stdout:
            raise RuntimeError(f"fio {self.name} in {directory} failed: {r.stderr.strip() or r.stdout[-500:]}")
        return json.loads(r.stdout[r.stdout.index("{") :])


FIO_WORKLOADS = (
    FioWorkload("seqread", "1 MiB sequential read", rw="read", bs="1M"),
    FioWorkload("seqwrite", "1 MiB sequential write + fsync, verified", writes=True, rw="write", bs="1M"),
    FioWorkload("seqwrite-4k", "4 KiB sequential write + fsync, verified", writes=True, rw="write", bs="4k",
                max_mb=64),
    FioWorkload("randread", "4 KiB random read, buffered, 2 jobs", rw="randread", bs="4k", numjobs=2),
    FioWorkload("randread-direct", "4 KiB random read, O_DIRECT, 2 jobs", rw="randread", bs="4k", numjobs=2,
                direct=True),
    FioWorkload("randread-cold", "4 KiB random read, cold cache, 2 jobs", cold=True, rw="randread", bs="4k",
                numjobs=2),
    # Many readers waiting on the backing at once: what a worker's io_uring is for.
    FioWorkload("randread-cold-16", "4 KiB random read, cold cache, 16 jobs", cold=True, rw="randread", bs="4k",
                numjobs=16),
    FioWorkload("randread-direct-16", "4 KiB random read, O_DIRECT (from the disk), 16 jobs", cold=True,
                rw="randread", bs="4k", numjobs=16, direct=True),
    FioWorkload("randwrite", "4 KiB random write, buffered, 2 jobs, verified", writes=True, rw="randwrite", bs="4k",
                numjobs=2, max_mb=32),
    FioWorkload("randwrite-direct", "4 KiB random write, O_DIRECT, 2 jobs, verified", writes=True, rw="randwrite",
                bs="4k", numjobs=2, direct=True, max_mb=32),
    FioWorkload("mixed", "4 KiB random 70/30 read/write, 2 jobs, verified as it goes", writes=True, rw="randrw",
                bs="4k", numjobs=2, mixread=70),
    FioWorkload("mmapread", "1 MiB sequential read through mmap", rw="read", bs="1M", ioengine="mmap"),
)
