"""The mount options table (fastpass/options.py), read through `fastpass mount`'s own parser: every
long option and its `-o` form give the same MountConfig, later options win, and what `-o` cannot
take is refused with a line that names it.  No mount: the integration tests mount for real."""

from __future__ import annotations

import argparse
import resource

import msgspec
import pytest

from fastpass import cli, options
from fastpass.config import MountConfig
from fastpass.kernel.mount import escape

LONG = [o for o in options.OPTIONS if o.long]
SAMPLE = {int: "12345", float: "2.5"}  # no default of any option


def _sample(option: options.Option) -> str:
    """A value for `option` that is none of its defaults (a comma in text values, to test the escape)."""
    if option.choices:
        return option.choices[-1]
    return SAMPLE.get(option.parse, "/var/tmp/a,b")  # type: ignore[arg-type]


def _fields(*argv: str) -> dict:
    return options.collect(cli.parser().parse_args(["mount", "/srv/b", "/mnt/m", *argv]).given)


def _config(*argv: str) -> MountConfig:
    return options.config("/srv/b", "/mnt/m", _fields(*argv))


@pytest.mark.parametrize("option", LONG, ids=lambda o: o.name)
def test_long_option_round_trips_through_o(option: options.Option) -> None:
    flag = f"--{option.name.replace('_', '-')}"
    if option.parse is None:
        via_long, via_o = _fields(flag), _fields("-o", option.name)
        expected = option.const
    else:
        value = _sample(option)
        via_long, via_o = _fields(flag, value), _fields("-o", f"{option.name}={escape(value)}")
        expected = (option.parse(value),) if option.repeat else option.parse(value)
    assert via_long == via_o == {option.field: expected}
    assert _config(*([flag] if option.parse is None else [flag, _sample(option)])) == \
        options.config("/srv/b", "/mnt/m", via_o)  # fmt: skip


def test_every_option_sets_a_config_field_and_names_are_unique() -> None:
    fields = {f.name for f in msgspec.structs.fields(MountConfig)}
    assert not [o.name for o in options.OPTIONS if o.field not in fields]
    names = [o.name for o in options.OPTIONS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["-o", "workers=2", "--workers", "3"], {"workers": 3}),
        (["--workers", "3", "-o", "workers=2"], {"workers": 2}),
        (["-o", "ro,rw,ro"], {"read_only": True}),
        (["-o", "nosuid,suid", "-o", "dev"], {"nosuid": False, "nodev": False}),
        (["--filter", "readonly", "-o", "filter=hide:pattern=*.tmp,filter=audit"],
         {"filters": ("readonly", "hide:pattern=*.tmp", "audit")}),
        (["-o", r"filter=quota:bytes=10\,files=2"], {"filters": ("quota:bytes=10,files=2",)}),
        (["-o", "x-systemd.automount,X-mount.mkdir,,cache=off,"], {"cache": "off"}),
        (["-o", "fsname=mirror of b,subtype=fastpass.test"], {"fsname": "mirror of b", "subtype": "fastpass.test"}),
        (["--allow-other", "-o", "no_default_permissions"], {"allow_other": True, "default_permissions": False}),
        (["-o", "defaults,noatime,nodiratime,lazytime,sync,dirsync"],
         {"atime": "noatime", "nodiratime": True, "lazytime": True, "sync": True, "dirsync": True}),
        (["-o", "strictatime,atime,diratime,nodiratime,async"], {"atime": "relatime", "nodiratime": True, "sync": False}),
    ],
)
def test_options_apply_in_order(given: list[str], expected: dict) -> None:
    assert _fields(*given) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workers=2,wrokers=3", "unknown mount option 'wrokers'"),
        ("noauto", "unknown mount option 'noauto'"),  # mount.fuse3 takes it out: here it is a mistake
        ("ro=1", "mount option 'ro' takes no value"),
        ("workers", "mount option 'workers' needs a value: workers=N"),
        ("workers=two", "mount option 'workers=two': expected a whole number"),
        ("revalidate=soon", "mount option 'revalidate=soon': expected a number"),
        ("cache=sometimes", "mount option 'cache=sometimes': choose from auto, off, strict"),
        ("subtype=a/b", "mount option 'subtype=a/b': expected a name of letters, digits, '.', '_', '+', '-'"),
        ("fsname=", "mount option 'fsname=': expected a value"),
    ],
)
def test_bad_o_option_is_named(text: str, message: str) -> None:
    with pytest.raises(options.OptionError) as e:
        _fields("-o", text)
    assert str(e.value) == message


def test_derived_defaults() -> None:
    """workers, io and default_permissions follow from other options when not given."""
    plain = _config()
    assert (plain.workers, plain.io, plain.default_permissions) == (options.default_workers("native"), "uring", False)
    pyfuse3 = _config("-o", "engine=pyfuse3")
    assert (pyfuse3.workers, pyfuse3.io, pyfuse3.passthrough) == (1, "plain", "off")
    assert _config("-o", "allow_other").default_permissions
    assert (plain.read_only, plain.nosuid, plain.nodev, plain.noexec) == (False, True, True, False)
    assert plain.source() == "/srv/b" and _config("-o", "fsname=mirror").source() == "mirror"


@pytest.mark.parametrize(
    "argv",
    [[], ["--allow-other"], ["--allow-other", "--no-default-permissions"], ["--default-permissions"],
     ["-o", "ro,suid,dev,noexec,debug,nonempty,fsname=a\\,b,subtype=x", "--filter", "hide:pattern=a,b"],
     ["--engine", "pyfuse3", "--attr-timeout", "0.5", "--log", "/var/tmp/l"]],
    ids=str,
)
def test_render_mounts_the_same_again(argv: list[str]) -> None:
    """What `stats` shows as the mount's options is an -o list that gives the same config back."""
    config = _config(*argv)
    assert options.config("/srv/b", "/mnt/m", _fields("-o", options.render(config))) == config


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--cache", "off", "-o", "workers=2"], None),
        (["--cache", "bogus"], "argument --cache: invalid choice: 'bogus' (choose from 'auto', 'off', 'strict')"),
        (["-w"], "argument -w/--workers: expected one argument"),
        (["--nope"], "unrecognized arguments: --nope"),
        (["-o", "nope"], "unknown mount option 'nope'"),
    ],
)
def test_problem_without_mounting(args: list[str], problem: str | None) -> None:
    """The bench's variant check: the same table, with no CLI import."""
    assert options.problem(args) == problem


def test_mount8_flags_reach_mount2() -> None:
    """mount(8)'s filesystem-independent options become mount(2) flags, as for any filesystem."""
    from fastpass import _linux
    from fastpass.kernel.mount import FLAGS

    c = options.config("/b", "/m", _fields("-o", "noatime,nodiratime,lazytime,sync,dirsync"))
    names = c.mount_options()
    assert {"noatime", "nodiratime", "lazytime", "sync", "dirsync"} <= set(names)
    flags = 0
    for name in names:
        flags |= FLAGS.get(name, 0)
    assert flags & _linux.MS_NOATIME and flags & _linux.MS_NODIRATIME and flags & _linux.MS_LAZYTIME
    assert flags & _linux.MS_SYNCHRONOUS and flags & _linux.MS_DIRSYNC
    assert not {"noatime", "relatime", "strictatime"} & set(options.config("/b", "/m", {}).mount_options())


@pytest.mark.parametrize(("euid", "memlock", "depth"), [
    (0, 8 << 20, 8), (1000, 8 << 20, 7), (1000, 64 << 20, 8), (1000, 1 << 20, 1), (1000, 64 << 10, 1),
    (1000, resource.RLIM_INFINITY, 8),
])  # fmt: skip
def test_default_io_depth_fits_the_memlock_limit(euid: int, memlock: int, depth: int) -> None:
    assert options.default_io_depth(euid, memlock) == depth


def test_dash_d_is_libfuses_debug_flag() -> None:
    """`-d`: in the foreground with every request logged, as for libfuse's filesystems."""
    from fastpass.cli import parser

    args = parser().parse_args(["mount", "/b", "/m", "-d"])
    assert args.foreground and options.config("/b", "/m", options.collect(args.given)).debug


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_bench_and_tune_help_shows_every_default(command: str) -> None:
    """What a run measured depends on every option: `--help` gives each one's default."""
    from fastpass.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS, []):  # [] says nothing
            assert f"(default: {action.default})" in text or "default:" in (action.help or ""), action.dest
