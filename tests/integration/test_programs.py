"""The programs people run, on every configuration, against the same program on a bind mount.

Each case is a job: a function that runs real programs (rsync, sqlite3,
pip, git, tar, cp, cc and make, sort, flock) on a mount and returns their
verdict, after asserting each program's own success (its exit status, and
its own check where it has one: `PRAGMA integrity_check`, `git fsck`,
`tar --compare`, `rsync --dry-run --checksum`).  The job runs first on a bind
mount (the reference, once per case for the whole module), then on the
configuration under test at the same mountpoint, so every path a program
writes into its files is the same.  The verdicts must be equal, and so must
the trees (tests/tree.py), seen both through the mount and on the backing
directory afterwards.  The "bind" configuration runs the job a second time
on a bind mount: it shows that the job and its snapshot are deterministic.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ENGINES, Mounted, bind_mount, fastpass_mount, scratch_dir
from tests.tree import data_map, differences, snapshot

# The fs fixture's configurations, and one more: N workers with passthrough and --allow-other,
# the way a shared machine mounts it (each request then runs with the caller's credentials).
CONFIGS = {**ENGINES, "native-2-allow-other": ("--workers", "2", "--passthrough", "on", "--allow-other"),
           "bind": ()}  # fmt: skip
MiB = 1 << 20
EPOCH = "1700000000"
# Programs that embed a clock or look at the user's own settings get fixed ones.
ENV = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "LC_ALL": "C", "TZ": "UTC", "SOURCE_DATE_EPOCH": EPOCH,
       "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "fp", "GIT_AUTHOR_EMAIL": "fp@example.org",
       "GIT_COMMITTER_NAME": "fp", "GIT_COMMITTER_EMAIL": "fp@example.org", "GIT_AUTHOR_DATE": f"@{EPOCH} +0000",
       "GIT_COMMITTER_DATE": f"@{EPOCH} +0000", "PIP_NO_CACHE_DIR": "1", "PIP_NO_INDEX": "1",
       "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
TIMEOUT = 90


def sh(*args: str | Path, cwd: Path | None = None, timeout: float = TIMEOUT) -> str:
    """Run a program; its stdout.  A non-zero exit fails the test with the program's stderr."""
    r = subprocess.run([str(a) for a in args], check=False, cwd=cwd, env=ENV, capture_output=True, text=True,
                       timeout=timeout)  # fmt: skip
    if r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-3000:]}\n{r.stdout[-2000:]}")
    return r.stdout


def all_ok(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[str]:
    """Wait for processes started together; each must exit 0.  Their stdouts."""
    outs = []
    for p in procs:
        out, errs = p.communicate(timeout=timeout)
        if p.returncode != 0:
            pytest.fail(f"{p.args!r} exited {p.returncode}:\n{errs[-3000:]}")
        outs.append(out)
    return outs


def python(script: str, *args: str | Path, stdin: int | None = None) -> subprocess.Popen:
    """A Python child running `script` with `args`, started now."""
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=ENV, text=True, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


# --- the mounts ---------------------------------------------------------------------------------

Job = Callable[[Mounted], object]
_references: dict[str, tuple[object, dict]] = {}  # case -> the bind mount's verdict and tree


@dataclass
class Program:
    """Runs a case's job on the bind reference and on one configuration, at one mountpoint."""

    config: str
    base: Path  # holds backing/ and mnt/ (conftest's layout), and src/ outside any mount
    case: str

    @property
    def src(self) -> Path:
        return self.base / "src"

    @contextlib.contextmanager
    def mounted(self, config: str) -> Iterator[Mounted]:
        """`config` mounted on base/mnt over a fresh, empty backing (left until the next mount)."""
        shutil.rmtree(self.base / "backing", ignore_errors=True)
        with bind_mount(self.base) if config == "bind" else fastpass_mount(self.base, *CONFIGS[config]) as m:
            yield m

    def run(self, job: Job, *, mtime: bool = False, holes: bool = False, loose: tuple[str, ...] = ()) -> object:
        """The job's verdict here; it and the tree must equal the reference's."""
        if self.case not in _references:
            with self.mounted("bind") as m:
                _references[self.case] = job(m), snapshot(m.mnt, mtime=mtime, holes=holes, loose=loose)
        verdict, tree = _references[self.case]
        with self.mounted(self.config) as m:
            got = job(m)
            # libfuse through pyfuse3 has no LSEEK, and under the writeback cache the kernel answers
            # SEEK_HOLE from its own size (docs/caching.md): holes are seen on the backing only.
            holes_here = holes and m.engine != "pyfuse3" and not m.writeback
            view = snapshot(m.mnt, mtime=mtime, holes=holes_here, loose=loose)
            assert got == verdict, f"{self.case} on {self.config}: the programs' verdict differs from the bind mount's"
            assert not differences(snapshot_of(tree, holes_here), view), "through the mount"
        backing = snapshot(m.backing, mtime=mtime, holes=holes, loose=loose)
        assert not differences(tree, backing), "on the backing directory"
        return got


def snapshot_of(tree: dict[str, dict], holes: bool) -> dict[str, dict]:
    """`tree` with or without its hole maps."""
    if holes:
        return tree
    return {rel: {k: v for k, v in e.items() if k not in ("blocks", "data")} for rel, e in tree.items()}


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """One directory for the module: the same mountpoint path in every run, so programs write the same paths."""
    with scratch_dir("fastpass-programs-") as path:
        make_sources(path / "src")
        yield path


@pytest.fixture(params=list(CONFIGS))
def prog(request: pytest.FixtureRequest, base: Path) -> Program:
    others = {k: v for k, v in request.node.callspec.params.items() if k != "prog"}
    return Program(request.param, base, f"{request.node.originalname}{others or ''}")


# --- sources, made once, outside any mount ------------------------------------------------------


def make_sources(src: Path) -> None:
    """orig/ and changed/ trees for rsync and tar, sparse files for cp, a wheel for pip."""
    orig, changed = src / "orig", src / "changed"
    orig.mkdir(parents=True)
    sh("cp", "-a", "/usr/include/linux/.", orig)
    rng = random.Random(14)
    (orig / "big").write_bytes(rng.randbytes(3 * MiB))  # rsync's delta transfer has something to match
    (orig / "private").write_bytes(b"secret\n")
    (orig / "private").chmod(0o600)
    (orig / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (orig / "tool").chmod(0o755)
    (orig / "empty-dir").mkdir()
    (orig / "link-to-big").symlink_to("big")
    (orig / "dangling").symlink_to("no/such/file")
    os.link(orig / "tool", orig / "tool-hardlink")
    os.mkfifo(orig / "fifo", 0o640)
    for name, attrs in {"big": {"user.kind": b"random", "user.n": b"3"}, "private": {"user.secret": b"\0\1\2"},
                        "empty-dir": {"user.dir": b"yes"}, "fs.h": {"user.header": b"x" * 300}}.items():  # fmt: skip
        for key, value in attrs.items():
            os.setxattr(orig / name, key, value)
    sh("setfacl", "-m", "u:1000:rw,g:100:r", orig / "private")  # POSIX ACLs: system.posix_acl_* xattrs
    sh("setfacl", "-d", "-m", "u:1000:rwx", orig / "empty-dir")

    settle(orig, int(EPOCH))
    sh("cp", "-a", f"{orig}/.", changed)
    shutil.rmtree(changed / "netfilter")  # --delete has a subtree to remove
    (changed / "input.h").unlink()
    big = bytearray((changed / "big").read_bytes())  # a few changed blocks, then a longer file
    for off in (4096, MiB + 100, 2 * MiB + 7):
        big[off : off + 1000] = rng.randbytes(1000)
    (changed / "big").write_bytes(bytes(big) + rng.randbytes(70000))
    (changed / "fs.h").write_text((orig / "fs.h").read_text().replace("struct", "STRUCT"))  # same size
    (changed / "private").chmod(0o640)
    sh("setfacl", "-m", "u:1001:r", changed / "private")
    sh("setfacl", "-k", changed / "empty-dir")
    (changed / "link-to-big").unlink()
    (changed / "link-to-big").symlink_to("private")
    (changed / "new-dir" / "deeper").mkdir(parents=True)
    (changed / "new-dir" / "deeper" / "new").write_text("new\n")
    os.setxattr(changed / "big", "user.kind", b"changed")
    os.removexattr(changed / "big", "user.n")
    os.setxattr(changed / "tool", "user.added", b"1")
    os.utime(changed / "tool", ns=(10**18, 10**18))
    os.utime(changed / "fs.h", ns=(1, 1))
    settle(changed, int(EPOCH) + 1000)

    sh("tar", *TAR_OPTS, "-cf", src / "orig.tar", "-C", orig, ".")

    with open(src / "sparse", "wb") as f:  # data at 0, 3 MiB and the last 4 KiB of 8 MiB; holes between
        for off, size in ((0, 64 * 1024), (3 * MiB, 128 * 1024), (8 * MiB - 4096, 4096)):
            f.seek(off)
            f.write(rng.randbytes(size))
    (src / "zeros").write_bytes(bytes(2 * MiB))  # allocated zeros: cp --sparse=always makes it all hole
    assert data_map(src / "sparse") == [(0, 64 * 1024), (3 * MiB, 3 * MiB + 128 * 1024), (8 * MiB - 4096, 8 * MiB)]

    make_wheel(src)


def settle(tree: Path, seconds: int) -> None:
    """Date what was made in the last hour `seconds`.  rsync leaves a directory's mtime alone when it
    equals the source's to the second, so a source made in the second a job runs gave a flaky tree."""
    recent = (time.time() - 3600) * 1e9
    for dirpath, dirnames, filenames in os.walk(tree, topdown=False):
        for path in [*(Path(dirpath) / name for name in filenames + dirnames), Path(dirpath)]:
            if os.lstat(path).st_mtime_ns > recent:
                os.utime(path, ns=(seconds * 10**9,) * 2, follow_symlinks=False)


def make_wheel(dest: Path) -> None:
    """fpdemo-1.0-py3-none-any.whl, written by hand (no network, no build backend)."""
    files = {
        "fpdemo/__init__.py": b"from fpdemo.calc import total\n\ndef main():\n    print('fpdemo', total(10))\n",
        "fpdemo/calc.py": b"def total(n):\n    return sum(range(n))\n",
        "fpdemo/data.txt": b"packaged data\n",
        "fpdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fpdemo\nVersion: 1.0\n",
        "fpdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "fpdemo-1.0.dist-info/entry_points.txt": b"[console_scripts]\nfpdemo = fpdemo:main\n",
    }
    record = io.StringIO()
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{name},sha256={digest},{len(data)}\n")
    record.write("fpdemo-1.0.dist-info/RECORD,,\n")
    files["fpdemo-1.0.dist-info/RECORD"] = record.getvalue().encode()
    with zipfile.ZipFile(dest / "fpdemo-1.0-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)


# --- rsync --------------------------------------------------------------------------------------


def rsync_nothing_left(options: str, source: Path, dst: Path) -> str:
    """rsync's own verdict: a checksumming dry run finds nothing to transfer (its itemized list, empty)."""
    return sh("rsync", options, "--checksum", "--delete", "--dry-run", "--itemize-changes", f"{source}/", f"{dst}/")


@pytest.mark.parametrize("update", [("--delete",), ("--inplace", "--no-whole-file", "--delete")],
                         ids=["temp-files", "inplace"])  # fmt: skip
def test_rsync(prog, update):
    """rsync -a of the kernel's headers (the issue's reproducer: ELOOP on the temp file's close), then of
    a changed tree with --delete: through rsync's temp files and renames, or patched in place by the
    delta algorithm."""

    def job(m: Mounted) -> object:
        dst = m.mnt / "dst"
        sh("rsync", "-a", "/usr/include/linux/", f"{dst}/")
        assert rsync_nothing_left("-a", Path("/usr/include/linux"), dst) == ""
        sh("rsync", "-a", f"{prog.src / 'orig'}/", f"{dst}/")
        sh("rsync", "-a", *update, f"{prog.src / 'changed'}/", f"{dst}/")
        return rsync_nothing_left("-a", prog.src / "changed", dst)

    assert prog.run(job, mtime=True) == ""


def test_rsync_xattrs_acls(prog):
    """rsync -aAX: user.* xattrs and POSIX ACLs copied, then changed, added and removed by a second pass."""

    def job(m: Mounted) -> object:
        dst = m.mnt / "dst"
        sh("rsync", "-aAX", f"{prog.src / 'orig'}/", f"{dst}/")
        assert os.getxattr(dst / "private", "user.secret") == b"\0\1\2"
        acl = sh("getfacl", "-cpn", dst / "private", dst / "empty-dir")
        sh("rsync", "-aAX", "--delete", f"{prog.src / 'changed'}/", f"{dst}/")
        return (rsync_nothing_left("-aAX", prog.src / "changed", dst), sorted(os.listxattr(dst / "big")), acl,
                sh("getfacl", "-cpn", dst / "private", dst / "empty-dir"))  # fmt: skip

    # rsync -A leaves a fifo with the time it made it (on the bind mount too): its mtime is not compared.
    nothing, names, before, after = prog.run(job, mtime=True, loose=("dst/fifo",))
    assert (nothing, names) == ("", ["user.kind"])
    assert "user:1000:rw-" in before and "default:user:1000:rwx" in before
    assert "user:1001:r--" in after and "default:" not in after


# --- SQLite -------------------------------------------------------------------------------------

SQLITE_WRITER = """
import sqlite3, sys
path, who, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(path, timeout=60, isolation_level=None)
con.execute("PRAGMA busy_timeout=60000")
for i in range(n):
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO t(who, i, pad) VALUES (?, ?, ?)", (who, i, bytes([who]) * (300 + i)))
    con.execute("COMMIT")
con.close()
"""
WRITERS, INSERTS = 4, 60


def sqlite_job(journal: str) -> Job:
    """WRITERS processes inserting at once into one database in `journal` mode; SQLite's own checks after."""

    def job(m: Mounted) -> object:
        db = m.mnt / "app" / "data.db"
        db.parent.mkdir()
        sh("sqlite3", db, f"PRAGMA journal_mode={journal}; CREATE TABLE t(who INT, i INT, pad BLOB);")
        all_ok([python(SQLITE_WRITER, db, who, INSERTS) for who in range(WRITERS)])
        check = sh("sqlite3", db, "PRAGMA integrity_check; PRAGMA journal_mode; SELECT count(*) FROM t;"
                   "SELECT who, count(*), sum(i), sum(length(pad)) FROM t GROUP BY who;")  # fmt: skip
        assert check.startswith(f"ok\n{journal.lower()}\n{WRITERS * INSERTS}\n"), check
        return check

    return job


@pytest.mark.parametrize("journal", ["WAL", "DELETE"])
def test_sqlite_writers(prog, journal):
    """SQLite with several writer processes at once, WAL (the issue's reproducer: disk I/O error with
    4 workers) and the rollback journal; integrity check and row counts by the sqlite3 CLI.
    The database's bytes depend on which writer won each lock, so only its presence is compared."""
    prog.run(sqlite_job(journal), loose=("app/data.db",))


# --- Python: venv and pip -----------------------------------------------------------------------


def test_venv_pip(prog):
    """python3 -m venv (ensurepip installs pip and setuptools: the issue's reproducer with 4 workers),
    then pip installs a local wheel, whose console script and package data then work."""

    def job(m: Mounted) -> object:
        venv = m.mnt / "venv"
        sh(sys.executable, "-m", "venv", venv, timeout=120)
        sh(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", prog.src / "fpdemo-1.0-py3-none-any.whl")
        data = "import importlib.resources as r; print(r.files('fpdemo').joinpath('data.txt').read_text(), end='')"
        return (sh(venv / "bin" / "fpdemo"), sh(venv / "bin" / "python", "-c", data),
                sh(venv / "bin" / "python", "-m", "pip", "check"))  # fmt: skip

    assert prog.run(job) == ("fpdemo 45\n", "packaged data\n", "No broken requirements found.\n")


# --- git ----------------------------------------------------------------------------------------


def test_git(prog):
    """git init, add, commit, mv, rm, gc, fsck, then clone (local, with hard links, and --no-local)."""

    def job(m: Mounted) -> object:
        repo = m.mnt / "repo"
        git = ("git", "-c", "gc.autoDetach=false", "-c", "pack.threads=1", "-c", "init.defaultBranch=main")
        sh(*git, "init", "-q", repo)
        rng = random.Random(1)
        for i in range(40):
            path = repo / f"d{i % 4}" / f"f{i}.txt"
            path.parent.mkdir(exist_ok=True)
            path.write_text("".join(f"line {rng.random()}\n" for _ in range(rng.randrange(1, 200))))
        (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
        (repo / "run.sh").chmod(0o755)
        (repo / "link").symlink_to("d0/f0.txt")
        sh(*git, "add", "-A", cwd=repo)
        sh(*git, "commit", "-qm", "one", cwd=repo)
        sh(*git, "mv", "d1", "moved", cwd=repo)
        sh(*git, "rm", "-q", "d2/f2.txt", cwd=repo)
        with open(repo / "d0" / "f0.txt", "a") as f:
            f.write("more\n")
        sh(*git, "commit", "-qam", "two", cwd=repo)
        sh(*git, "gc", "-q", "--prune=now", cwd=repo)
        fsck = sh(*git, "fsck", "--full", "--strict", "--no-progress", cwd=repo)
        sh(*git, "clone", "-q", repo, m.mnt / "clone")
        sh(*git, "clone", "-q", "--no-local", repo, m.mnt / "copy")
        sh(*git, "fsck", "--full", "--strict", "--no-progress", cwd=m.mnt / "copy")
        status = sh(*git, "status", "--porcelain", cwd=m.mnt / "clone")
        return fsck, status, sh(*git, "log", "--format=%H %T %s", cwd=m.mnt / "copy")

    fsck, status, log = prog.run(job, loose=("*/.git/index",))  # the index holds each file's ctime and inode
    assert (fsck, status, len(log.splitlines())) == ("", "", 2)


# --- tar ----------------------------------------------------------------------------------------

# The same archive from the same tree: sorted names, no access or change times, and xattrs.
TAR_OPTS = ("--format=posix", "--acls", "--xattrs", "--xattrs-include=*", "--sort=name",
            "--pax-option=delete=atime,delete=ctime")  # fmt: skip


def test_tar_xattrs(prog):
    """tar --xattrs --acls extracts a tree (modes, times, links, a fifo, user.* xattrs, ACLs) onto the mount, compares
    it (tar -d), and archives it again from the mount: the same archive, byte for byte."""

    def job(m: Mounted) -> object:
        out = m.mnt / "x"
        out.mkdir()
        sh("tar", *TAR_OPTS, "-xpf", prog.src / "orig.tar", "-C", out)
        compare = sh("tar", *TAR_OPTS, "-df", prog.src / "orig.tar", "-C", out)
        sh("tar", *TAR_OPTS, "-cf", m.mnt / "again.tar", "-C", out, ".")
        assert (m.mnt / "again.tar").read_bytes() == (prog.src / "orig.tar").read_bytes()
        return compare, os.getxattr(out / "fs.h", "user.header")

    assert prog.run(job, mtime=True, loose=("again.tar",)) == ("", b"x" * 300)  # compared in the job


# --- cp --sparse=always -------------------------------------------------------------------------


def test_cp_sparse(prog):
    """cp --sparse=always onto the mount and within it keeps the holes (st_blocks and the SEEK_HOLE map
    compared with the bind mount's), and turns a file of written zeros into one hole."""

    def job(m: Mounted) -> object:
        sh("cp", "--sparse=always", prog.src / "sparse", m.mnt / "a")
        sh("cp", "--sparse=always", prog.src / "zeros", m.mnt / "z")
        sh("cp", "--sparse=always", m.mnt / "a", m.mnt / "b")
        sh("cmp", prog.src / "sparse", m.mnt / "b")
        sh("cmp", prog.src / "zeros", m.mnt / "z")
        return os.stat(m.mnt / "z").st_blocks, os.stat(m.mnt / "b").st_blocks

    z, b = prog.run(job, holes=True)
    assert z == 0 and b < 8 * MiB // 512


# --- cc and make --------------------------------------------------------------------------------

SOURCES = {
    "Makefile": "CFLAGS = -O2 -Wall -Werror\nhello: main.o greet.o\n\t$(CC) -o $@ $^\n"
                "main.o greet.o: greet.h\nclean:\n\trm -f hello *.o\n",
    "greet.h": "const char *greet(int n);\n",
    "greet.c": '#include <stdio.h>\n#include "greet.h"\nconst char *greet(int n) {\n'
               '    static char buf[64];\n    snprintf(buf, sizeof buf, "hello %d", n * 6);\n    return buf;\n}\n',
    "main.c": '#include <stdio.h>\n#include "greet.h"\nint main(void) { puts(greet(7)); return 0; }\n',
}  # fmt: skip


def test_cc_make(prog):
    """A Makefile builds a C program on the mount; the binary runs; make -q then sees it up to date
    (mtimes through the mount), and a newer header makes it rebuild."""

    def job(m: Mounted) -> object:
        proj = m.mnt / "proj"
        proj.mkdir()
        for name, text in SOURCES.items():
            (proj / name).write_text(text)
            os.utime(proj / name, ns=(int(EPOCH) * 10**9,) * 2)
        sh("make", "-j2", cwd=proj)
        runs = sh(proj / "hello")
        for name in ("hello", "main.o", "greet.o"):  # built after the sources, at a time of our choosing
            os.utime(proj / name, ns=((int(EPOCH) + 100) * 10**9,) * 2)
        up_to_date = subprocess.run(["make", "-q"], check=False, cwd=proj, env=ENV, timeout=TIMEOUT).returncode
        os.utime(proj / "greet.h", ns=((int(EPOCH) + 200) * 10**9,) * 2)  # then the header changed
        stale = subprocess.run(["make", "-q"], check=False, cwd=proj, env=ENV, timeout=TIMEOUT).returncode
        rebuilt = sh("make", cwd=proj)
        return runs, up_to_date, stale, sorted(rebuilt.split("\n")[:-1])

    runs, up_to_date, stale, rebuilt = prog.run(job)
    assert (runs, up_to_date, stale, len(rebuilt)) == ("hello 42\n", 0, 1, 3)


# --- sort ---------------------------------------------------------------------------------------


def test_sort_temp_files(prog):
    """sort with 1 MiB of memory on a few MiB: its temp files go to a directory on the mount."""

    def job(m: Mounted) -> object:
        rng = random.Random(5)
        lines = [f"{rng.getrandbits(64):020d} {rng.random()}\n" for _ in range(120_000)]
        (m.mnt / "in").write_text("".join(lines))
        (m.mnt / "tmp").mkdir()
        sh("sort", "-T", m.mnt / "tmp", "-S", "1M", "--parallel=2", "-o", m.mnt / "out", m.mnt / "in")
        sh("sort", "-c", m.mnt / "out")
        assert (m.mnt / "out").read_text() == "".join(sorted(lines))
        return os.listdir(m.mnt / "tmp")

    assert prog.run(job) == []


# --- locks --------------------------------------------------------------------------------------

LOCKED_COUNTER = """
import fcntl, os, sys
path, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = fcntl.flock if kind == "flock" else fcntl.lockf
for _ in range(n):
    fd = os.open(path, os.O_RDWR)
    lock(fd, fcntl.LOCK_EX)
    value = int(os.pread(fd, 32, 0))
    os.pwrite(fd, b"%08d" % (value + 1), 0)
    lock(fd, fcntl.LOCK_UN)
    os.close(fd)
"""
SHELL_COUNTER = 'for i in $(seq "$2"); do flock "$1.lock" sh -c \'echo $(( $(cat "$1") + 1 )) > "$1"\' - "$1"; done'
COUNTERS, INCREMENTS = 4, 100


def test_locked_counters(prog):
    """Counters incremented by several processes at once, each under a lock: flock(2), POSIX fcntl
    locks (lockf), and the flock(1) program.  No increment may be lost."""

    def job(m: Mounted) -> object:
        counts = {}
        for kind in ("flock", "lockf"):
            path = m.mnt / kind
            path.write_bytes(b"%08d" % 0)
            all_ok([python(LOCKED_COUNTER, path, kind, INCREMENTS) for _ in range(COUNTERS)])
            counts[kind] = int(path.read_bytes())
        path = m.mnt / "shell"
        path.write_text("0\n")
        procs = [subprocess.Popen(["sh", "-c", SHELL_COUNTER, "-", str(path), str(INCREMENTS)], env=ENV, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(COUNTERS)]  # fmt: skip
        all_ok(procs)
        counts["flock(1)"] = int(path.read_text())
        return counts

    assert prog.run(job) == dict.fromkeys(("flock", "lockf", "flock(1)"), COUNTERS * INCREMENTS)


# --- O_TMPFILE, then a name ---------------------------------------------------------------------


def test_tmpfile_linkat(prog):
    """open(O_TMPFILE) writes an anonymous file, linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW) names it,
    and writes through the fd after that land in the named file."""

    def job(m: Mounted) -> object:
        d = m.mnt / "d"
        d.mkdir()
        if m.engine == "pyfuse3":  # libfuse through pyfuse3 has no TMPFILE operation (docs/io.md: Engines)
            assert err_of(os.open, d, os.O_TMPFILE | os.O_RDWR, 0o640) == errno.EOPNOTSUPP
            return None
        fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
        dirfd = os.open(d, os.O_PATH)
        try:
            os.write(fd, b"anonymous")
            listed = os.listdir(d)
            nlink = os.fstat(fd).st_nlink
            os.link(f"/proc/self/fd/{fd}", "named", dst_dir_fd=dirfd)  # linkat with AT_SYMLINK_FOLLOW
            os.write(fd, b" then named")
            os.fsync(fd)
            return listed, nlink, os.fstat(fd).st_nlink, (d / "named").read_bytes()
        finally:
            os.close(dirfd)
            os.close(fd)

    if prog.config == "pyfuse3":
        with prog.mounted(prog.config) as m:
            assert job(m) is None
        return
    assert prog.run(job) == ([], 0, 1, b"anonymous then named")


def err_of(fn, *args) -> int:
    try:
        fd = fn(*args)
    except OSError as e:
        return e.errno
    os.close(fd)
    return 0


# --- a shared mapping between processes --------------------------------------------------------

MMAP_WRITER = """
import mmap, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 4 << 20)
m = mmap.mmap(fd, 4 << 20, mmap.MAP_SHARED)
for page in range(0, 4 << 20, 1 << 16):
    m[page : page + 16] = b"writer %09x" % page
print("written", flush=True)
sys.stdin.readline()  # the reader has written its answer into the same pages
answers = sum(m[page + 16 : page + 32] == b"reader %09x" % page for page in range(0, 4 << 20, 1 << 16))
m.flush()
print(answers, flush=True)
"""
MMAP_READER = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED)
seen = sum(m[page : page + 16] == b"writer %09x" % page for page in range(0, 4 << 20, 1 << 16))
for page in range(0, 4 << 20, 1 << 16):
    m[page + 16 : page + 32] = b"reader %09x" % page
m.flush()
print(seen)
"""


def test_shared_mmap(prog):
    """One process writes a MAP_SHARED mapping, another maps the same file, sees the writes and
    answers through its own mapping, and the first sees the answers; the file has both after msync."""

    def job(m: Mounted) -> object:
        path = m.mnt / "shared"
        writer = python(MMAP_WRITER, path, stdin=subprocess.PIPE)
        assert writer.stdout.readline() == "written\n", writer.stderr.read() if writer.poll() is not None else ""
        (seen,) = all_ok([python(MMAP_READER, path)])
        writer.stdin.write("go\n")
        writer.stdin.flush()
        (answers,) = all_ok([writer])
        data = path.read_bytes()
        return int(seen), int(answers), hashlib.sha256(data).hexdigest()

    seen, answers, _ = prog.run(job)
    assert seen == answers == 64
