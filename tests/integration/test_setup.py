"""tools/setup with the distribution's own python3, as on a stock Debian or Ubuntu.

That python3 is externally managed (PEP 668), so the set-up installs into a virtual environment of
its own.  Here it goes into a scratch prefix (FASTPASS_PREFIX) with the command linked into a
scratch bin directory (FASTPASS_BINDIR), and the result is run the way users run it: the linked
command, with no PYTHONPATH, as root and as uid 1000, mounting for real.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import is_mounted, scratch_dir, wait_for
from test_multiuser import GID, UID, _alive, _clear_user_mount, _state_path, _user_dirs, dev_fuse_for_users, user1000  # noqa: F401

from tests.users import as_user

TREE = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def _system_python_reason() -> str | None:
    if os.geteuid() != 0:
        return "tools/setup needs root"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON} on this machine"
    old = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"], check=False)
    return f"{SYSTEM_PYTHON} is older than 3.11, which fastpass needs" if old.returncode else None


@pytest.fixture(scope="module")
def installed():
    """(prefix, bindir) of a runtime set-up made with the system python3 into a scratch directory."""
    reason = _system_python_reason()
    if reason:
        pytest.skip(reason)
    with scratch_dir("fastpass-setup-") as base:
        prefix, bindir = base / "opt" / "fastpass", base / "bin"
        env = dict(os.environ, PYTHON=SYSTEM_PYTHON, FASTPASS_PREFIX=str(prefix), FASTPASS_BINDIR=str(bindir))
        env.pop("PYTHONPATH", None)
        r = subprocess.run([str(TREE / "tools" / "setup"), "--runtime"], env=env, capture_output=True, text=True,
                           timeout=900, check=False)  # fmt: skip
        assert r.returncode == 0, f"tools/setup --runtime failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        yield prefix, bindir


def _clean_env(**more: str) -> dict[str, str]:
    """What mount(8) or a login shell gives: no PYTHONPATH, so the installed copy is what runs."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **more}


def test_runtime_install_is_the_systems_python_with_runtime_dependencies_only(installed) -> None:
    prefix, bindir = installed
    assert (bindir / "fastpass").resolve() == (prefix / "bin" / "fastpass").resolve()
    probe = ("import importlib.util as u, json, os, sys, fastpass; print(json.dumps([sys._base_executable, "
             "os.path.dirname(fastpass.__file__), [m for m in ('pytest', 'hypothesis', 'pyfuse3', 'matplotlib', "
             "'msgspec', 'rich', 'uvloop') if u.find_spec(m)]]))")  # fmt: skip
    r = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", probe],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd="/",
    )  # fmt: skip (not this tree's cwd on sys.path)
    base, package, found = json.loads(r.stdout)
    assert os.path.realpath(base) == os.path.realpath(SYSTEM_PYTHON)
    assert Path(package).is_relative_to(prefix), "the command must run a copy every user can read, not this tree"
    assert found == ["matplotlib", "msgspec", "rich", "uvloop"], "runtime and plot only: no test extras"
    # Set up again with nothing changed: quick, and the same install.
    env = dict(os.environ, PYTHON=SYSTEM_PYTHON, FASTPASS_PREFIX=str(prefix), FASTPASS_BINDIR=str(bindir))
    before = (prefix / ".fastpass-source").read_text()
    r = subprocess.run([str(TREE / "tools" / "setup"), "--runtime"], env=env, capture_output=True, text=True,
                       timeout=300, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (prefix / ".fastpass-source").read_text() == before


def test_installed_command_mounts_as_root(installed, world_dir) -> None:
    _prefix, bindir = installed
    backing, mnt = world_dir / "backing", world_dir / "mnt"
    backing.mkdir()
    mnt.mkdir()
    (backing / "file").write_text("from the backing")
    command = str(bindir / "fastpass")
    try:
        r = subprocess.run([command, "mount", str(backing), str(mnt), "-w", "1"], env=_clean_env(),
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert (mnt / "file").read_text() == "from the backing"
        (mnt / "new").write_text("through the installed command")
        assert (backing / "new").read_text() == "through the installed command"
        r = subprocess.run([command, "unmount", str(mnt)], env=_clean_env(), capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(
                [command, "unmount", str(mnt)], env=_clean_env(), capture_output=True, timeout=60, check=False
            )


@pytest.mark.usefixtures("user1000", "dev_fuse_for_users")
def test_installed_command_mounts_as_a_user(installed, world_dir) -> None:
    """uid 1000 runs the linked command itself (exec, not a fork of this root process): every
    directory on its way and the interpreter must be open to that user."""
    _prefix, bindir = installed
    backing, mnt, runtime, env, log = _user_dirs(world_dir)
    command = str(bindir / "fastpass")
    env = _clean_env(XDG_RUNTIME_DIR=env["XDG_RUNTIME_DIR"], HOME=env["HOME"])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([command, *args], env=env, user=UID, group=GID, extra_groups=[], capture_output=True,
                              text=True, timeout=60, check=False, cwd="/")  # fmt: skip

    pid = None
    try:
        r = run("--version")
        assert r.returncode == 0, f"uid {UID} cannot run {command}: {r.stderr}"
        r = run("mount", str(backing), str(mnt), "--log", str(log))
        assert r.returncode == 0, f"{r.stderr}\nlog:\n{log.read_text() if log.exists() else ''}"
        pid = json.loads(_state_path(runtime, mnt).read_text())["pid"]
        assert os.stat(f"/proc/{pid}").st_uid == UID

        def roundtrip(m: Path) -> tuple[str, str]:
            (m / "mine").write_text("a user's file")
            return (m / "existing").read_text(), (m / "mine").read_text()

        assert as_user(roundtrip, mnt) == ("was there", "a user's file")
        assert (backing / "mine").stat().st_uid == UID
        r = run("unmount", str(mnt))
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
        assert wait_for(lambda: not _alive(pid), 10), "the user's server outlived `fastpass unmount`"
    finally:
        _clear_user_mount(mnt, pid)
