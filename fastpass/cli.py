"""Command line: subcommands -> config -> the module that does the work.  No logic here.

Size: over 500 lines because each of the seven subcommands' argument tables and its
handful of one-line refusals live here, beside each other, so that --help and the
errors read alike; none holds logic of its own."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import logging.handlers
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from fastpass import options, restart, startup, state, stats, supervisor, systemd
from fastpass.config import CACHE_MODES, ENGINES, IO_PATHS, PASSTHROUGH_MODES, SUBTYPE, TRANSPORTS, MountConfig
from fastpass.kernel import mount


def _fail(message: str) -> int:
    print(f"fastpass: error: {message}", file=sys.stderr)
    return 1


SYSLOG = "/dev/log"  # where syslog (or the journal) takes messages, where one runs


def _setup_logging(debug: bool, path: str | None) -> None:
    """Log to `path`; without one to stderr, unless stderr goes nowhere (a server in the background):
    then to syslog, as other daemons do, where it runs (else nowhere)."""
    if path:
        handler: logging.Handler = logging.FileHandler(path)
    elif not _stderr_discarded():
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.handlers.SysLogHandler(SYSLOG, logging.handlers.SysLogHandler.LOG_DAEMON)
            handler.setFormatter(logging.Formatter("fastpass[%(process)d]: %(levelname)s %(name)s: %(message)s"))
        except OSError:  # no syslog here
            handler = logging.NullHandler()
    if not isinstance(handler, logging.handlers.SysLogHandler):
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _stderr_discarded() -> bool:
    """Whether stderr is /dev/null (a daemon's, or a resumed background supervisor's)."""
    try:
        return os.path.samestat(os.fstat(2), os.stat(os.devnull))
    except OSError:
        return True


def _user_modules() -> None:
    """--filter MODULE:CLASS finds the user's own modules in the current directory, as `python -m` does."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def cmd_mount(args: argparse.Namespace) -> int:
    if re.fullmatch(r"/dev/fd/\d+", args.mountpoint):
        return _fail(f"mountpoint {args.mountpoint}: mount.fuse3's drop_privileges mounts before fastpass starts, "
                     "which fastpass does not take: remove the option, and umount what it mounted")  # fmt: skip
    try:
        config = options.config(args.backing, args.mountpoint, options.collect(args.given))
    except options.OptionError as e:
        return _fail(str(e))
    if os.geteuid() != 0 and not (config.nosuid and config.nodev):
        print("fastpass: warning: suid and dev take effect only as root (fusermount3 mounts a user's filesystem "
              "nosuid,nodev): mounting nosuid,nodev", file=sys.stderr)  # fmt: skip
        import msgspec

        config = msgspec.structs.replace(config, nosuid=True, nodev=True)
    _user_modules()
    try:
        supervisor.check(config)
    except supervisor.StartError as e:
        return _fail(str(e))
    if config.log:
        try:
            with open(config.log, "a"):
                pass
        except OSError as e:
            return _fail(f"cannot write the log file {config.log}: {e.strerror}")
    if args.foreground:
        _setup_logging(config.debug, config.log)
        failed: list[str] = []
        code = supervisor.run(config, lambda err: failed.append(err) if err else systemd.notify("READY=1"))
        return _fail(failed[0]) if failed else code
    return _daemonize(config)


def _daemonize(config: MountConfig) -> int:
    """Serve in a detached child; return once it is serving or has failed (see fastpass.startup)."""
    r, w = os.pipe()
    log_start = startup.log_size(config.log)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        systemd.forget()
        os.setsid()
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        _setup_logging(config.debug, config.log)  # syslog without --log
        report = startup.Report(w)
        os._exit(_logged("supervisor", lambda: supervisor.run(config, report.ready, report.mounted)))
    os.close(w)
    if config.log:
        _setup_logging(config.debug, config.log)  # should the server die unheard, its log says so
    with os.fdopen(r, "rb") as f:
        error = startup.wait(f, pid, config.mountpoint, config.log, log_start)
    return _fail(error) if error else 0


def _resolve_parent(path: str) -> str:
    """Resolve symlinks above `path` but not `path` itself: stat of a hung mount root would hang."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def cmd_unmount(args: argparse.Namespace) -> int:
    mnt = _resolve_parent(args.mountpoint)
    if not mount.is_mountpoint(mnt):
        return _fail(f"{mnt} is not mounted")
    entry = mount.mount_entry(mnt)
    record = state.read(mnt)
    subtypes = {SUBTYPE, *([record.config.subtype] if record else [])}
    if entry is None or entry.fstype not in {f"fuse.{t}" for t in subtypes}:
        return _fail(f"{mnt} is not a fastpass mount")
    try:
        clean = mount.unmount(mnt)
    except mount.MountError as e:
        return _fail(str(e))
    if not clean:
        print(f"fastpass: {mnt} is busy: detached lazily; the server exits when the last file is closed")
        return 0
    if record is not None:
        _wait_gone(record.pid, args.timeout)
        state.remove_stale(mnt, record.pid)  # the record of a server that was killed (a dead mount)
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    """A new fastpass (the one installed now) takes the mount over: files stay open, I/O goes on."""
    mnt = _resolve_parent(args.mountpoint)
    try:
        before = stats.fetch(mnt)
        answer = stats.ask(mnt, b"restart", timeout=args.timeout).decode().strip()
    except stats.StatsUnavailable as e:
        return _fail(str(e))
    if answer != "ok":
        return _fail(f"{mnt}: restart {answer or 'refused: no answer'}")
    old = {w.pid for w in before.workers}
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            now = stats.fetch(mnt)
        except stats.StatsUnavailable:  # between the exec and the new code's socket
            now = None
        if now is not None and all(w.alive and w.pid not in old for w in now.workers):
            print(f"fastpass: restarted {mnt}: supervisor {now.supervisor_pid}, workers "
                  f"{' '.join(str(w.pid) for w in now.workers)}")  # fmt: skip
            return 0
        time.sleep(0.05)
    return _fail(f"{mnt}: the restart did not finish within {args.timeout:g} s (see the log)")


def cmd_workers(args: argparse.Namespace) -> int:
    """Say how many workers serve the mount, or change it while it serves (`Pool.resize`)."""
    mnt = _resolve_parent(args.mountpoint)
    try:
        if args.count is None:
            now = stats.fetch(mnt)
        else:
            now = stats.resize(mnt, args.count, args.timeout)
    except (stats.StatsUnavailable, TimeoutError) as e:
        return _fail(str(e))
    except stats.Refused as e:
        return _fail(f"{mnt}: {e}")
    print(f"{mnt}: {len(now.workers)} worker{'s' * (len(now.workers) != 1)} (pids "
          f"{' '.join(str(w.pid) for w in now.workers)}), at most {now.max_workers}")  # fmt: skip
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Internal: the supervisor's process after `fastpass restart` executed it (fastpass.restart)."""
    handover = restart.read(args.fd)
    config = handover.record.config
    if not args.check:
        _setup_logging(config.debug, config.log)  # without --log: a -f mount's terminal, else syslog
    return _logged("the resumed supervisor", lambda: supervisor.resume(handover, args.mountpoint, args.check))


def _logged(who: str, body: Callable[[], int]) -> int:
    """body()'s exit code; 1, with the traceback in the log, if it raised anything."""
    code = 1
    try:
        code = body()
    except BaseException:
        logging.getLogger("fastpass").exception("%s failed", who)
    finally:
        logging.shutdown()
    return code


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while state.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _unwind_on_sigterm() -> None:
    """SIGTERM ends a bench like Ctrl-C does: through the `finally` blocks that unmount."""
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))


def _interrupted() -> int:
    """Ctrl-C in bench or tune: the `finally` blocks on the way out unmounted what it had mounted."""
    print("fastpass: interrupted; every mount it made is gone", file=sys.stderr)
    return 128 + signal.SIGINT


def _unplottable(path: str | None) -> int | None:
    """--plot without matplotlib (the `plot` extra) is refused before anything runs, not after."""
    if path and importlib.util.find_spec("matplotlib") is None:
        return _fail("--plot needs matplotlib: pip install 'fastpass[plot]'")
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    from fastpass.bench import progress, report, runner
    from fastpass.bench.suites import SUITES
    from fastpass.bench.workloads import Load

    if (refused := _unplottable(args.plot)) is not None:
        return refused
    _unwind_on_sigterm()
    names = args.workloads.split(",") if args.workloads else SUITES[args.suite]
    mount_args = [f"--engine={args.engine}", f"--passthrough={args.passthrough}", f"--cache={args.cache}",
                  *_io_options(args)]  # fmt: skip
    for name in ("attr_timeout", "entry_timeout"):
        if getattr(args, name) is not None:
            mount_args.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    if args.workers is not None:
        mount_args.append(f"--workers={args.workers}")
    mount_args += [f"--filter={spec}" for spec in args.filter]
    if args.log:
        mount_args += ["--log", os.path.realpath(args.log)]
    _user_modules()
    try:
        variants = [runner.parse_variant(spec) for spec in args.variant]
        runner.check(args.backing, names, args.repeat, args.clients, variants)
        with progress.bar(len(names) * args.repeat * (len(variants) + 2)) as step:
            record = runner.run(args.backing, names, args.repeat, Load(args.size, args.seconds, args.clients),
                                mount_args, variants, step)  # fmt: skip
    except runner.BenchError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _interrupted()
    progress.table(record)
    if args.report:
        with open(args.report, "w") as f:
            f.write(report.markdown(record))
    if args.plot:
        report.plot(record, args.plot)
    return _finish(record, args.json, [r.name for r in record.results if not r.ok])


def _io_options(args: argparse.Namespace,
                names: tuple[str, ...] = ("io", "io_depth", "transport", "queue_depth")) -> list[str]:  # fmt: skip
    """The I/O path options bench and tune pass to their mounts (the server's default where not given)."""
    return [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in names
            if getattr(args, name) is not None]  # fmt: skip


def _finish(record: object, json_path: str | None, failed: list[str]) -> int:
    """Write a bench or tune record as JSON on request; the exit status says if integrity held."""
    if json_path:
        import msgspec

        with open(json_path, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(record)))
    if failed:
        return _fail(f"integrity check failed: {', '.join(failed)}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from fastpass.bench import progress, runner, tune

    if (refused := _unplottable(args.plot)) is not None:
        return refused
    _unwind_on_sigterm()
    if args.backing and state.read(_resolve_parent(args.backing)) is not None:
        return _tune_live(args, _resolve_parent(args.backing))
    names = args.workloads.split(",") if args.workloads else tune.SUITE
    max_workers = args.max_workers if args.max_workers is not None else (1 if args.engine == "pyfuse3" else 2 * (os.cpu_count() or 1))
    counts = list(range(1, max_workers + 1))
    try:
        tune.check(args.backing, names, counts, args.repeat, args.clients, args.engine)
        ios = [f"--io {io}" for io in IO_PATHS] if args.io == "both" else [f"--io {args.io}" if args.io else ""]
        transports = (["--transport uring", "--transport dev"] if args.transport == "both"
                      else [f"--transport {args.transport}" if args.transport else ""])  # fmt: skip
        paths = [f"{io} {t}".strip() for io in ios for t in transports]
        with progress.bar(len(paths) * len(counts) * len(names) * args.repeat * 2) as step:
            record = tune.run(args.backing, names, counts, args.repeat, args.size, args.seconds, step,
                              _io_options(args, ("io_depth", "queue_depth")), args.engine, paths,
                              clients=args.clients, max_repeat=args.max_repeat)  # fmt: skip
    except runner.BenchError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _interrupted()
    tune.table(record)
    on = f" on {record.path}" if len(paths) > 1 else ""
    print(f"Recommended: {record.workers} worker{'s' * (record.workers > 1)}{on}, the fewest whose score is within "
          f"{tune.TOLERANCE:.0%}\n  of the best count's or too close to it to tell apart")
    print(f"  command: {record.command}")
    print(f"  fstab:   {os.path.realpath(args.backing) if args.backing else 'BACKING'} MOUNTPOINT fuse.fastpass "
          f"{record.fstab} 0 0")
    most = max(len(r) for r in record.round_scores)
    print(f"Run-to-run spread of the score: {record.spread:.1%} (median over counts of highest - lowest\n  round, "
          f"{record.repeat}{f' to {most}' if most > record.repeat else ''} rounds a count)")
    if (doubt := tune.doubt(record)) is not None:
        print(doubt)
    for line in tune.knee_lines(record):
        print(line)
    if args.plot:
        tune.plot(record, args.plot)
    return _finish(record, args.json, [w.name for w in record.workloads if not w.ok])


# What a live mount's tuning does not take: it measures the mount's own load, as it is mounted.
_OFFLINE_ONLY = ("workloads", "io", "io_depth", "transport", "queue_depth", "plot")


def _tune_live(args: argparse.Namespace, mnt: str) -> int:
    """`fastpass tune MOUNTPOINT`: change the live mount's worker count under its own load (`fastpass.bench.live`)."""
    from fastpass.bench import live

    given = [name for name in _OFFLINE_ONLY if getattr(args, name) is not None]
    if args.engine != "native" or given:
        return _fail(f"--{(given or ['engine'])[0].replace('_', '-')} is for tuning on fresh mounts: on the live mount "
                     f"{mnt}, tune measures the mount's own load as it is mounted")  # fmt: skip
    try:
        most = args.max_workers or stats.fetch(mnt).max_workers
        record = live.run(mnt, range(1, most + 1), args.repeat, args.seconds, max_repeat=args.max_repeat,
                          apply=not args.no_apply, progress=lambda what: print(f"tune: {what}", file=sys.stderr))  # fmt: skip
    except (live.LiveError, stats.StatsUnavailable, TimeoutError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print(f"fastpass: interrupted; {mnt} serves with the workers it had", file=sys.stderr)
        return 128 + signal.SIGINT
    for line in live.lines(record):
        print(line)
    return _finish(record, args.json, [])


def _print_piped(text: str) -> None:
    """Print to a stdout that a reader may close early (`| head`): what it did not read is dropped,
    as other command-line tools do, instead of a BrokenPipeError."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again


def cmd_stats(args: argparse.Namespace) -> int:
    import msgspec

    mnt = _resolve_parent(args.mountpoint)
    try:
        record = stats.fetch(mnt)
        if args.json:  # no rich: JSON works wherever the server's own modules import
            _print_piped(msgspec.json.format(msgspec.json.encode(record)).decode())
        elif args.watch is None:
            from rich.console import Console

            Console().print(stats.render(record), crop=False)  # the options line runs on, to be pasted
        else:
            from rich.live import Live

            with Live(stats.render(record), auto_refresh=False) as live:
                while True:
                    time.sleep(args.watch)
                    live.update(stats.render(stats.fetch(mnt)), refresh=True)
    except stats.StatsUnavailable as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        pass
    return 0


def _clients_argument(parser: argparse.ArgumentParser) -> None:
    """--clients, the same for bench and tune: one client per CPU loads the whole machine."""
    parser.add_argument("--clients", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="client processes at once in the workloads run by many (metadata, openread), each on "
                             f"its own files (default: one per CPU, {os.cpu_count() or 1})")  # fmt: skip


def _version() -> str:
    """The installed package's version (pyproject.toml holds it), or why there is none."""
    from importlib import metadata

    try:
        return metadata.version("fastpass")
    except metadata.PackageNotFoundError:
        return "(not installed: run from a source tree)"


class _WithDefaults(argparse.HelpFormatter):
    """Every option's default in its help (bench and tune: what a run measured depends on them all)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (argparse.SUPPRESS, False) or not action.option_strings:
            return text
        if action.default is None or action.default == []:
            return f"{text} (default: the mount's own)" if "fastpass mount" in text else text
        return f"{text} (default: %(default)s)".lstrip()


class _Debug(argparse.Action):
    """`-d`, as libfuse's filesystems take it: in the foreground, logging every request and reply."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        namespace.foreground = True
        namespace.given = [*getattr(namespace, "given", []), ("debug", True)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastpass", description="Multiprocess passthrough FUSE file server.")
    p.add_argument("--version", action="version", version=f"fastpass {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mirror BACKING at MOUNTPOINT",
                       description="Mirror BACKING at MOUNTPOINT.  `fastpass BACKING MOUNTPOINT -o OPTIONS`, as "
                                   "mount.fuse3 runs it for `mount -t fuse.fastpass` and fstab, means the same.")  # fmt: skip
    m.add_argument("backing")
    m.add_argument("mountpoint")
    m.add_argument("-f", "--foreground", action="store_true",
                   help="stay attached; log to stderr; tell systemd when serving ($NOTIFY_SOCKET)")  # fmt: skip
    options.add_arguments(m)
    m.add_argument("-d", dest="given", action=_Debug, nargs=0, default=argparse.SUPPRESS,
                   help="libfuse's debug flag: --foreground --debug")  # fmt: skip
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("unmount", help="unmount a fastpass mount (lazily if busy)")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server to exit")
    u.set_defaults(func=cmd_unmount)

    r = sub.add_parser("restart", help="hand a live mount over to the fastpass installed now, workers and all",
                       description="A new fastpass (the one installed now, e.g. after an upgrade) takes the mount "
                                   "over in the server's own process: open files, nodeids and I/O go on, no client "
                                   "sees an error, nothing is unmounted.")  # fmt: skip
    r.add_argument("mountpoint")
    r.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for every worker to be replaced")
    r.set_defaults(func=cmd_restart)

    w = sub.add_parser("workers", help="show or change how many workers serve a live mount",
                       description="With N: the mount serves with N workers from now on, with no client error and "
                                   "no unmount (up to its --max-workers; /dev/fuse transport only).")  # fmt: skip
    w.add_argument("mountpoint")
    w.add_argument("count", nargs="?", type=int, metavar="N")
    w.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the change")
    w.set_defaults(func=cmd_workers)

    rs = sub.add_parser("resume", help=argparse.SUPPRESS)  # internal: what `restart` executes in the server's process
    rs.add_argument("mountpoint")
    rs.add_argument("fd", type=int)
    rs.add_argument("--check", action="store_true")
    rs.set_defaults(func=cmd_resume)

    st = sub.add_parser("stats", help="per-operation counts and latencies, workers, errors of a mount")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true", help="the whole record as JSON")
    st.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="S", help="refresh every S seconds")
    st.set_defaults(func=cmd_stats)

    b = sub.add_parser("bench", help="benchmark fastpass against a bind mount of the same directory",
                       formatter_class=_WithDefaults)
    b.add_argument("backing", nargs="?", help="directory to serve (default: a generated one, removed after)")
    b.add_argument("--suite", choices=["quick", "full"], default="quick",
                   help="which workloads: quick (the main ones) or full (every one)")
    b.add_argument("--workloads", help="comma-separated workload names instead of a suite")
    b.add_argument("--repeat", type=int, default=1, help="rounds of A/B alternation")
    b.add_argument("--size", type=int, default=256, metavar="MB", help="data size per workload")
    b.add_argument("--seconds", type=float, default=3.0, help="duration of time-based workloads")
    _clients_argument(b)
    b.add_argument("--json", metavar="FILE", help="write the full record as JSON")
    b.add_argument("--report", metavar="FILE.md", help="write a Markdown report")
    b.add_argument("--plot", metavar="FILE.png", help="write a chart of the ratios")
    b.add_argument("-w", "--workers", type=int, metavar="N", help="passed to the fastpass mount")
    b.add_argument("--engine", choices=ENGINES, default="native",
                   help="passed to the fastpass mount; compare engines in one run with "
                        "--variant 'pyfuse3=--engine pyfuse3'")  # fmt: skip
    b.add_argument("--passthrough", choices=PASSTHROUGH_MODES, default="auto", help="passed to the fastpass mount")
    b.add_argument("--cache", choices=CACHE_MODES, default="auto", help="passed to the fastpass mount")
    b.add_argument("--attr-timeout", type=float, metavar="S", help="passed to the fastpass mount")
    b.add_argument("--entry-timeout", type=float, metavar="S", help="passed to the fastpass mount")
    b.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                   help="also bench fastpass mounted with these extra options (after the ones above, so they "
                        "win), reported as NAME; repeatable, e.g. --variant 'cache-off=--cache off'")  # fmt: skip
    b.add_argument("--io", choices=IO_PATHS, help="passed to the fastpass mount")
    b.add_argument("--io-depth", type=int, metavar="N", help="passed to the fastpass mount")
    b.add_argument("--transport", choices=TRANSPORTS,
                   help="passed to the fastpass mount; compare transports in one run with "
                        "--variant 'uring=--transport uring'")  # fmt: skip
    b.add_argument("--queue-depth", type=int, metavar="N", help="passed to the fastpass mount")
    b.add_argument("--log", metavar="FILE", help="server log file")
    b.add_argument("--filter", action="append", default=[], metavar="SPEC",
                   help="passed to the fastpass mount (a variant adds its own: --variant 'audit=--filter audit')")  # fmt: skip
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("tune", help="measure which --workers count suits this machine, or a live mount under its load",
                       formatter_class=_WithDefaults,
                       description="Given a directory (or nothing), bench fresh mounts of it at each worker count. "
                                   "Given a live fastpass mount, change its worker count under its own load, measure "
                                   "the requests its workers answer at each, and leave it with the best "
                                   "(--max-workers, --repeat, --max-repeat, --seconds, --json and --no-apply apply).")  # fmt: skip
    t.add_argument("backing", nargs="?",
                   help="directory to serve (default: a generated one, removed after), or a live fastpass mount")  # fmt: skip
    t.add_argument("--workloads", help="comma-separated workload names (default: the tune suite)")
    t.add_argument("--max-workers", type=int, metavar="N",
                   help=f"try 1 to N workers (default: twice the CPUs, {2 * (os.cpu_count() or 1)}; 1 for pyfuse3)")  # fmt: skip
    t.add_argument("--engine", choices=ENGINES, default="native", help="passed to the fastpass mounts")
    t.add_argument("--repeat", type=int, default=3, help="rounds of A/B alternation per count")
    t.add_argument("--max-repeat", type=int, default=6, metavar="N",
                   help="rounds a count may get in all where it is too close to the best to tell apart")
    t.add_argument("--size", type=int, default=256, metavar="MB", help="data size per workload")
    t.add_argument("--seconds", type=float, default=3.0, help="duration of time-based workloads")
    _clients_argument(t)
    t.add_argument("--io", choices=(*IO_PATHS, "both"),
                   help="passed to every fastpass mount; both: every count on each path, and the better one chosen")  # fmt: skip
    t.add_argument("--io-depth", type=int, metavar="N", help="passed to every fastpass mount")
    t.add_argument("--transport", choices=(*TRANSPORTS, "both"),
                   help="passed to every fastpass mount; both: every count on FUSE-over-io_uring (--transport uring) "
                        "and on /dev/fuse, and the better one chosen")  # fmt: skip
    t.add_argument("--queue-depth", type=int, metavar="N", help="passed to every fastpass mount")
    t.add_argument("--json", metavar="FILE", help="write the full record as JSON")
    t.add_argument("--plot", metavar="FILE.png", help="write a chart of throughput against workers")
    t.add_argument("--no-apply", action="store_true",
                   help="on a live mount: leave it with the count it had, not the recommended one")  # fmt: skip
    t.set_defaults(func=cmd_tune)
    return p


COMMANDS = ("mount", "unmount", "restart", "workers", "stats", "bench", "tune")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in COMMANDS and ("/" in argv[0] or os.path.exists(argv[0])):
        argv = ["mount", *argv]  # `fastpass SOURCE MOUNTPOINT -o OPTIONS`: how mount.fuse3 runs a FUSE filesystem
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
