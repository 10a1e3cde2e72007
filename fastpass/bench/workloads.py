"""Benchmark workloads: each measures one directory and returns a throughput.

Data workloads run fio with JSON output; every workload that writes also
verifies what it wrote (fio verify), so a fast but wrong server cannot
score.  Files are laid out on the backing directory before any measurement,
so both sides of a comparison read the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field

import msgspec


class Measurement(msgspec.Struct):
    value: float  # in `unit`, higher is better
    unit: str
    ok: bool  # integrity verified (or nothing written)
    detail: str = ""


@dataclass(frozen=True)
class FioWorkload:
    name: str
    description: str
    rw: str
    bs: str
    numjobs: int = 1
    direct: bool = False
    verify: bool = False
    extra: tuple[str, ...] = field(default=())

    def prepare(self, backing: str, size_mb: int) -> None:
        """Lay out this workload's files on the backing dir (reads need data to read)."""
        if self.rw in ("read", "randread", "randrw"):
            self._fio(backing, size_mb, 1.0, "--create_only=1")

    def run(self, directory: str, size_mb: int, seconds: float) -> Measurement:
        out = self._fio(directory, size_mb, seconds)
        return _measure(out, self)

    def _fio(self, directory: str, size_mb: int, seconds: float, *more: str) -> dict:
        args = [
            "fio", "--output-format=json", f"--name={self.name}", f"--directory={directory}",
            f"--filename_format={self.name}.$jobnum", f"--rw={self.rw}", f"--bs={self.bs}",
            f"--size={max(1, size_mb // self.numjobs)}M", f"--numjobs={self.numjobs}", "--group_reporting",
            f"--direct={int(self.direct)}", "--ioengine=psync", *self.extra, *more,
        ]  # fmt: skip
        if self.verify:
            args += ["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--end_fsync=1"]
        elif self.rw.startswith("rand") or self.rw == "read":
            args += [f"--runtime={seconds}", "--time_based"]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"fio {self.name} on {directory} failed: {r.stderr.strip() or r.stdout[-500:]}")
        return json.loads(r.stdout[r.stdout.index("{") :])


def _measure(out: dict, w: FioWorkload) -> Measurement:
    job = out["jobs"][0]
    ok = job.get("error", 0) == 0
    side = job["write"] if w.rw in ("write", "randwrite") else job["read"]
    if w.bs == "4k":
        iops = side["iops"] + (job["write"]["iops"] if w.rw == "randrw" else 0)
        return Measurement(iops, "IOPS", ok)
    return Measurement(side["bw_bytes"] / 1e6, "MB/s", ok)


WORKLOADS: dict[str, FioWorkload] = {
    w.name: w
    for w in (
        FioWorkload("seqread", "1 MiB sequential read", "read", "1M"),
        FioWorkload("seqwrite", "1 MiB sequential write + fsync, verified", "write", "1M", verify=True),
        FioWorkload("randread", "4 KiB random read, buffered, 2 jobs", "randread", "4k", numjobs=2),
        FioWorkload("randread-direct", "4 KiB random read, O_DIRECT, 2 jobs", "randread", "4k", numjobs=2,
                    direct=True),  # fmt: skip
    )
}

SUITES = {
    "quick": ["seqread", "seqwrite", "randread", "randread-direct"],
}


def cleanup(directory: str) -> None:
    """Remove the files workloads leave behind in `directory`."""
    for name in os.listdir(directory):
        if name.split(".")[0] in WORKLOADS:
            os.unlink(os.path.join(directory, name))
