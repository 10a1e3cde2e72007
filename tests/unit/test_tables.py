"""The two dispatch tables agree: kernel/opcodes.SPECS (what a request carries) and fs/table.HANDLERS
(who answers it), and each handler takes exactly what its decoder yields."""

from __future__ import annotations

import inspect
import struct

import pytest

from fastpass.fs.table import AS_CALLER, HANDLERS, Route, build
from fastpass.kernel.abi import Opcode
from fastpass.kernel.opcodes import SPECS, OpSpec, decoder

ALL = sorted(Opcode)


def _fields(s: struct.Struct | None) -> int:
    """Fields of a struct that carry meaning: pad bytes (`x`) yield nothing."""
    return len(s.unpack(bytes(s.size))) if s else 0


def expected_arity(spec: OpSpec) -> int:
    """Values a decoder yields: struct fields + names + tail.  BATCH_FORGET's count is not passed on:
    it is the length of the forgets list, so that row yields the list alone."""
    fields = 0 if spec.tail == "forgets" else _fields(spec.arg)
    return fields + spec.names + (1 if spec.tail else 0)


def minimal_body(spec: OpSpec) -> bytes:
    """The smallest well-formed body: a zeroed struct (size/count 0) and one-letter names."""
    arg = spec.arg
    return (bytes(arg.size) if arg else b"") + b"n\0" * spec.names


def positional_params(fn) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    assert all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params), f"{fn.__qualname__}: *args/**kw"
    return params


# --- coverage --------------------------------------------------------------------------------

def test_specs_and_handlers_cover_the_same_opcodes() -> None:
    assert set(SPECS) == set(HANDLERS)


def test_every_kernel_opcode_has_a_row() -> None:
    missing_spec = [op.name for op in Opcode if op not in SPECS]
    missing_handler = [op.name for op in Opcode if op not in HANDLERS]
    assert not missing_spec and not missing_handler
    assert set(SPECS) <= set(Opcode)


def test_spec_names_match_opcodes() -> None:
    for op, spec in SPECS.items():
        assert spec.name == Opcode(op).name


def test_no_reply_rows() -> None:
    """FORGET, BATCH_FORGET and NOTIFY_REPLY are never answered; INTERRUPT is not either (fs/fuse/dev.c: no reply is read for them)."""
    silent = {op for op, spec in SPECS.items() if not spec.reply}
    assert {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.NOTIFY_REPLY} <= silent
    assert silent <= {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.NOTIFY_REPLY, Opcode.INTERRUPT}


def test_as_caller_rows_have_handlers() -> None:
    assert AS_CALLER <= set(HANDLERS)
    assert all(HANDLERS[op] is not None for op in AS_CALLER)


# --- arity -----------------------------------------------------------------------------------

HANDLED = [op for op in ALL if HANDLERS[op] is not None]


@pytest.mark.parametrize("op", HANDLED, ids=lambda o: Opcode(o).name)
def test_decoder_yields_the_counted_values(op: int) -> None:
    spec = SPECS[op]
    got = decoder(spec)(memoryview(minimal_body(spec)))
    assert len(got) == expected_arity(spec)


@pytest.mark.parametrize("op", HANDLED, ids=lambda o: Opcode(o).name)
def test_handler_arity_matches_decoder(op: int) -> None:
    spec, handler = SPECS[op], HANDLERS[op]
    params = positional_params(handler)
    assert len(params) == 2 + expected_arity(spec), (
        f"{handler.__module__}.{handler.__qualname__} takes {len(params)} parameters, "
        f"the {spec.name} decoder yields {expected_arity(spec)} (+ fs, req)"
    )
    assert [p.name for p in params[:2]] == ["fs", "req"]


@pytest.mark.parametrize("op", HANDLED, ids=lambda o: Opcode(o).name)
def test_routes_call_handlers_with_decoded_args(op: int) -> None:
    """What the worker does: route.handler(fs, req, *route.decode(body)) must bind."""
    route = build()[op]
    args = route.decode(memoryview(minimal_body(SPECS[op])))
    try:
        inspect.signature(route.handler).bind(object(), object(), *args)
    except TypeError as e:
        pytest.fail(f"{route.name}: decoder yields {len(args)} values, "
                    f"{route.handler.__qualname__} takes {len(positional_params(route.handler)) - 2}: {e}")


# --- build() ---------------------------------------------------------------------------------

def test_build_indexes_routes_by_opcode() -> None:
    routes = build()
    assert isinstance(routes, list)
    assert len(routes) == max(Opcode) + 1
    for op in range(len(routes)):
        route = routes[op]
        if op not in SPECS:
            assert route is None, op  # 0, 7, 19: unknown
            continue
        assert isinstance(route, Route)
        assert route.name == SPECS[op].name
        assert route.handler is HANDLERS[op]
        assert route.reply == SPECS[op].reply
        assert route.as_caller == (op in AS_CALLER)
        assert callable(route.decode)
    assert routes[0] is None and routes[7] is None and routes[19] is None
