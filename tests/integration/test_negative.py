"""Missing names kept by the kernel (negative dentries) and their coherence with the backing.

A LOOKUP of a missing name is answered with nodeid 0 and the parent's entry timeout, so the
kernel answers later probes of the name itself (an import or a PATH search probes thousands).
It may keep one only where it would be dropped when the name appears: by the watcher's
FUSE_NOTIFY_INVAL_ENTRY for a name created or moved in outside, by the kernel itself for a
name made through the mount, and otherwise by the timeout a found name gets too.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mounted, err, fastpass_mount, wait_for
from tests.integration import test_cache
from tests.integration.test_cache import LONG, lstat_or_none, shows
from tests.integration.test_passthrough import op_count, stats
from tests.users import UID, as_user

watched = test_cache.watched  # a mount that trusts names for 60 s, in each configuration

PROBES = 1000
FEW = 3  # LOOKUPs a thousand probes may cost: the first, and a spare for a racing invalidation


def lookups(mnt: Path) -> int:
    return op_count(stats(mnt), "LOOKUP")


def probe(path: Path, times: int = PROBES) -> None:
    for _ in range(times):
        assert lstat_or_none(path) is None


def test_probes_of_a_missing_name_reach_the_server_once(watched: Mounted) -> None:
    (watched.backing / "d").mkdir()
    (watched.mnt / "d").stat()
    before = lookups(watched.mnt)
    probe(watched.mnt / "missing")
    probe(watched.mnt / "d" / "missing")
    assert lookups(watched.mnt) - before <= 2 * FEW


@pytest.mark.parametrize("where", [".", "d"])
def test_a_name_created_outside_shows(watched: Mounted, where: str) -> None:
    (watched.backing / "d").mkdir()
    for name, make in (("f", lambda p: p.write_bytes(b"x")), ("sub", Path.mkdir), ("ln", lambda p: p.symlink_to("f"))):
        probe(watched.mnt / where / name, 3)
        make(watched.backing / where / name)
        assert shows(lambda n=name: lstat_or_none(watched.mnt / where / n) is not None)
    assert (watched.mnt / where / "f").read_bytes() == b"x"
    assert (watched.mnt / where / "sub").is_dir()
    assert os.readlink(watched.mnt / where / "ln") == "f"


def test_a_name_moved_in_outside_shows(watched: Mounted) -> None:
    (watched.backing / "d").mkdir()
    (watched.backing / "elsewhere").write_bytes(b"moved")
    probe(watched.mnt / "d" / "f", 3)
    os.rename(watched.backing / "elsewhere", watched.backing / "d" / "f")
    assert shows(lambda: lstat_or_none(watched.mnt / "d" / "f") is not None)
    assert (watched.mnt / "d" / "f").read_bytes() == b"moved"


def test_names_made_through_the_mount_show_at_once(watched: Mounted) -> None:
    mnt = watched.mnt
    (watched.backing / "src").write_bytes(b"s")
    names = ("created", "dir", "node", "sym", "hard", "renamed")
    for name in names:
        probe(mnt / name, 3)
    (mnt / "created").write_bytes(b"c")
    (mnt / "dir").mkdir()
    os.mkfifo(mnt / "node")
    (mnt / "sym").symlink_to("src")
    os.link(mnt / "src", mnt / "hard")
    (mnt / "tmp").write_bytes(b"r")
    os.rename(mnt / "tmp", mnt / "renamed")
    for name in names:
        assert lstat_or_none(mnt / name) is not None, name  # no waiting
    assert (mnt / "renamed").read_bytes() == b"r"
    assert lstat_or_none(mnt / "tmp") is None
    fd = os.open(mnt / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    assert err(os.open, mnt / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644) == errno.EEXIST


def test_a_name_removed_outside_and_made_again(watched: Mounted) -> None:
    (watched.backing / "f").write_bytes(b"one")
    assert (watched.mnt / "f").read_bytes() == b"one"
    os.unlink(watched.backing / "f")
    assert shows(lambda: lstat_or_none(watched.mnt / "f") is None)
    before = lookups(watched.mnt)
    probe(watched.mnt / "f")
    assert lookups(watched.mnt) - before <= FEW  # gone, and now kept as gone
    (watched.backing / "f").write_bytes(b"two!")
    assert shows(lambda: lstat_or_none(watched.mnt / "f") is not None)
    assert (watched.mnt / "f").read_bytes() == b"two!"


def test_a_missing_name_in_a_directory_renamed_outside(watched: Mounted) -> None:
    (watched.backing / "d").mkdir()
    probe(watched.mnt / "d" / "f", 3)
    os.rename(watched.backing / "d", watched.backing / "e")
    assert shows(lambda: lstat_or_none(watched.mnt / "d") is None)
    probe(watched.mnt / "e" / "f", 3)
    (watched.backing / "e" / "f").write_bytes(b"x")
    assert shows(lambda: lstat_or_none(watched.mnt / "e" / "f") is not None)
    assert (watched.mnt / "e" / "f").read_bytes() == b"x"


# --- another user, on a shared mount -------------------------------------------------------------
def _probes(path: str) -> int:
    """As the user: PROBES lstats of a missing name; how many found it (0)."""
    return sum(lstat_or_none(Path(path)) is not None for _ in range(PROBES))


def _exists(path: str) -> bool:
    return lstat_or_none(Path(path)) is not None


def _create(path: str) -> bool:
    Path(path).write_bytes(b"mine")
    return lstat_or_none(Path(path)) is not None


@pytest.fixture
def shared(world_dir: Path) -> Iterator[Mounted]:
    with fastpass_mount(world_dir, "--allow-other", "--workers", "2", *LONG) as m:
        os.chmod(m.backing, 0o777)
        yield m


def test_another_user_probes_once_and_sees_outside_creates(shared: Mounted) -> None:
    path = str(shared.mnt / "missing")
    before = lookups(shared.mnt)
    assert as_user(_probes, path) == 0
    assert lookups(shared.mnt) - before <= FEW
    (shared.backing / "missing").write_bytes(b"x")
    assert as_user(wait_for, lambda: _exists(path), 1.0, 0.005)
    probe(shared.mnt / "theirs", 3)
    assert as_user(_create, str(shared.mnt / "theirs"))  # through the mount: at once
    assert (shared.mnt / "theirs").stat().st_uid == UID


def test_a_kept_missing_name_still_needs_search_permission(shared: Mounted) -> None:
    """root keeps `private/missing` as missing; the user, who may not search `private`, is told
    EACCES, not ENOENT (the kernel checks the path before it uses a kept name)."""
    (shared.backing / "private").mkdir(mode=0o700)
    probe(shared.mnt / "private" / "missing", 3)
    assert as_user(err, os.lstat, str(shared.mnt / "private" / "missing")) == errno.EACCES


# --- where nothing would drop a kept name: the timeouts decide ------------------------------------
@pytest.mark.parametrize("mode", [("--cache", "strict"), ("--entry-timeout", "0")], ids=["strict", "timeout-0"])
def test_nothing_kept_without_an_entry_timeout(tmp_path: Path, mode: tuple[str, ...]) -> None:
    with fastpass_mount(tmp_path, *mode) as m:
        before = lookups(m.mnt)
        probe(m.mnt / "missing", 20)
        assert lookups(m.mnt) - before >= 20
        (m.backing / "missing").write_bytes(b"x")
        assert lstat_or_none(m.mnt / "missing") is not None  # at once


@pytest.mark.parametrize("mode", [("--revalidate", "0.3"), ("--cache", "off")], ids=["revalidate", "off"])
def test_kept_for_the_entry_timeout_without_a_watcher(tmp_path: Path, mode: tuple[str, ...]) -> None:
    """Unwatched: a missing name is kept as long as a found one, and shows once that passes."""
    with fastpass_mount(tmp_path, *mode, "--passthrough", "off") as m:
        before = lookups(m.mnt)
        probe(m.mnt / "missing", 100)
        assert lookups(m.mnt) - before < 100
        (m.backing / "missing").write_bytes(b"x")
        assert wait_for(lambda: lstat_or_none(m.mnt / "missing") is not None, 3)


def test_nothing_kept_where_a_filter_decides_lookups(tmp_path: Path) -> None:
    """A LOOKUP filter may answer by caller or by its own state: each probe must reach it."""
    with fastpass_mount(tmp_path, "--filter", "hide:pattern=*.secret") as m:
        before = lookups(m.mnt)
        probe(m.mnt / "missing", 20)
        assert lookups(m.mnt) - before >= 20
