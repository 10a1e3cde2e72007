"""Mounting as every FUSE filesystem is mounted: `mount -t fuse.fastpass`, fstab lines, `umount`.

mount(8) runs /sbin/mount.fuse (Debian's mount.fuse3), which takes out the options meant for mount
and systemd (noauto, nofail, _netdev, user...; mount itself drops x-*), adds `dev,suid` unless told
nodev, nosuid, and runs `fastpass SOURCE MOUNTPOINT -o OPTIONS` through /bin/sh.  mount(8) clears
PATH first, so the shell looks in its default path, where tools/setup puts the command.  That
command is the installed one; PYTHONPATH, which mount(8) and mount.fuse3 pass on, makes it run the
fastpass of this tree (the `helper_env` fixture).

Each mount here logs to a file of the test (-o log=FILE), checked for tracebacks, and is taken
down by the fixtures' own means whatever happens.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FASTPASS, MOUNT_TIMEOUT, OPERATIONS, Mounted, check_log, is_mounted, server_pid, stop, wait_for

from fastpass import state
from fastpass.kernel.mount import mount_entry


def _dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    (backing / "f").write_text("served")
    return backing, mnt, tmp_path / "server.log"


def _run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=MOUNT_TIMEOUT, env=env, check=False)


def _mount_options(mnt: Path) -> set[str]:
    """The per-mount options mountinfo shows (ro, nosuid, nodev, noexec...)."""
    with open("/proc/self/mountinfo") as f:
        return next(set(line.split()[5].split(",")) for line in f if line.split()[4] == str(mnt))


def _super_options(mnt: Path) -> set[str]:
    """The superblock's options mountinfo shows after its separator (rw, sync, dirsync, user_id=...)."""
    with open("/proc/self/mountinfo") as f:
        return next(set(line.split(" - ")[1].split()[2].split(",")) for line in f if line.split()[4] == str(mnt))


@contextlib.contextmanager
def _served(backing: Path, mnt: Path, log: Path) -> Iterator[Mounted]:
    """A mount that the test makes through mount(8) (setting `pid`); stopped and its log checked after."""
    m = Mounted("native", backing, mnt, log)
    try:
        yield m
    finally:
        m.pid = m.pid or server_pid(mnt)
        stop(m)
    check_log(m)


def _umount_ends_server(m: Mounted, env: dict[str, str], *umount: str) -> None:
    """`umount MNT` (or the command given) unmounts, and the server exits on its own and removes its record."""
    r = _run(*(umount or ("umount", str(m.mnt))), env=env)
    assert r.returncode == 0, r.stderr
    assert not is_mounted(m.mnt)
    assert wait_for(lambda: not state.alive(m.pid), 10), f"the server (pid {m.pid}) outlived the unmount"
    assert state.read(str(m.mnt)) is None, "the state record outlived the mount"


def test_mount_t(tmp_path, helper_env):
    backing, mnt, log = _dirs(tmp_path)
    with _served(backing, mnt, log) as m:
        r = _run("mount", "-t", "fuse.fastpass", str(backing), str(mnt), "-o", f"workers=2,cache=auto,log={log}",
                 env=helper_env)  # fmt: skip
        assert r.returncode == 0, f"{r.stderr}\nlog:\n{log.read_text() if log.exists() else ''}"
        m.pid = server_pid(mnt)
        entry = mount_entry(str(mnt))
        assert entry is not None and (entry.fstype, entry.source) == ("fuse.fastpass", str(backing))
        assert (mnt / "f").read_text() == "served"
        config = state.read(str(mnt)).config
        assert (config.workers, config.cache) == (2, "auto")
        r = _run(*FASTPASS, "stats", "--json", str(mnt), env=helper_env)  # the options as an -o list, from the table
        assert r.returncode == 0, r.stderr
        assert {"workers=2", "cache=auto", "suid", "dev"} <= set(json.loads(r.stdout)["options"].split(","))
        # mount.fuse3 adds dev,suid for root, as for every FUSE filesystem: nosuid,nodev are the fstab's to ask.
        assert (config.nosuid, config.nodev) == (False, False)
        assert not {"nosuid", "nodev"} & _mount_options(mnt)
        _umount_ends_server(m, helper_env)


def test_mount_t_standard_options(tmp_path, helper_env):
    """ro, noexec, nosuid, nodev, fsname= and subtype= reach the mount; `fastpass unmount` knows its subtype."""
    backing, mnt, log = _dirs(tmp_path)
    script = backing / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    m = Mounted("native", backing, mnt, log)
    try:
        r = _run("mount", "-t", "fuse.fastpass", str(backing), str(mnt), "-o",
                 f"ro,noexec,nosuid,nodev,fsname=mirror\\,b,subtype=fastpass.test,workers=1,log={log}",
                 env=helper_env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        m.pid = server_pid(mnt)
        entry = mount_entry(str(mnt))
        assert entry is not None and (entry.fstype, entry.source) == ("fuse.fastpass.test", "mirror,b")
        assert {"ro", "noexec", "nosuid", "nodev"} <= _mount_options(mnt)
        assert (mnt / "f").read_text() == "served"
        with pytest.raises(OSError) as e:
            (mnt / "new").write_text("x")
        assert e.value.errno == errno.EROFS
        with pytest.raises(PermissionError):
            subprocess.run([str(mnt / "run.sh")], check=False)
        assert subprocess.run([str(script)], capture_output=True, text=True, check=True).stdout == "ran\n"
        _umount_ends_server(m, helper_env, *FASTPASS, "unmount", str(mnt))
    finally:
        m.pid = m.pid or server_pid(mnt)
        stop(m)
    check_log(m)


def documented_fstab_line() -> str:
    """The fstab line docs/operations.md shows."""
    shape = re.compile(r"\S+\s+\S+\s+fuse\.fastpass\s+\S+\s+0\s+0")
    lines = [line for line in OPERATIONS.read_text().splitlines() if shape.fullmatch(line)]
    assert len(lines) == 1, "docs/operations.md should show one fstab line"
    return lines[0]


def test_documented_fstab_line(tmp_path, helper_env):
    """docs/operations.md's fstab line, its paths made this test's: `mount -a -T FILE`, then `mount -T FILE MNT`."""
    backing, mnt, log = _dirs(tmp_path)
    line = documented_fstab_line().replace("/srv/data", str(backing)).replace("/mnt/data", str(mnt))
    source, point, fstype, opts, *_ = line.split()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{source} {point} {fstype} {opts},log={log} 0 0\n")
    with _served(backing, mnt, log) as m:
        for command in (["mount", "-a", "-T", str(fstab)], ["mount", "-T", str(fstab), str(mnt)]):
            r = _run(*command, env=helper_env)
            assert r.returncode == 0, f"{' '.join(command)}: {r.stderr}"
            m.pid = server_pid(mnt)
            entry = mount_entry(str(mnt))
            assert entry is not None and (entry.fstype, entry.source) == ("fuse.fastpass", str(backing)), command
            assert (mnt / "f").read_text() == "served"
            _umount_ends_server(m, helper_env)


def test_fstab_atime_and_sync_options(tmp_path, helper_env):
    """An fstab line with mount(8)'s filesystem-independent options (`defaults,noatime,nofail`, and the
    rest of the atime and sync family) mounts with `mount -a -T`, and mountinfo shows their flags."""
    backing, mnt, log = _dirs(tmp_path)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{backing} {mnt} fuse.fastpass defaults,noatime,nodiratime,sync,dirsync,nofail,workers=1,"
                     f"log={log} 0 0\n")  # fmt: skip
    with _served(backing, mnt, log) as m:
        r = _run("mount", "-a", "-T", str(fstab), env=helper_env)
        assert r.returncode == 0, r.stderr
        m.pid = server_pid(mnt)
        assert {"noatime", "nodiratime"} <= _mount_options(mnt)
        assert {"sync", "dirsync"} <= _super_options(mnt)  # the superblock's flags, not the mount's
        (mnt / "new").write_text("written")
        assert (backing / "new").read_text() == "written"
        _umount_ends_server(m, helper_env)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ("workers=2,bogus", "unknown mount option 'bogus'"),
        ("workers=many", "mount option 'workers=many': expected a whole number"),
        ("debug=yes", "mount option 'debug' takes no value"),
        ("cache=sometimes", "mount option 'cache=sometimes': choose from auto, off, strict"),
    ],
)
def test_bad_option_refused_nothing_mounted(tmp_path, helper_env, opts, message):
    backing, mnt, log = _dirs(tmp_path)
    m = Mounted("native", backing, mnt, log)
    try:
        r = _run("mount", "-t", "fuse.fastpass", str(backing), str(mnt), "-o", f"log={log},{opts}", env=helper_env)
        assert r.returncode != 0
        assert r.stderr.strip().splitlines() == [f"fastpass: error: {message}"]
        assert not is_mounted(mnt) and server_pid(mnt) is None
        # The same from `fastpass mount` itself, its long options beside.
        r = _run(*FASTPASS, "mount", str(backing), str(mnt), "--cache", "off", "-o", opts, env=helper_env)
        assert (r.returncode, r.stderr.strip().splitlines()) == (1, [f"fastpass: error: {message}"])
        assert not is_mounted(mnt)
    finally:
        m.pid = m.pid or server_pid(mnt)
        stop(m)
