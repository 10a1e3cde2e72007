"""`--filter SPEC`: from a command-line spec to a filter instance, or a one-line error.

    SPEC = NAME[:ARG=VALUE,...]            a built-in: readonly, hide, audit, quota
         | MODULE:CLASS[:ARG=VALUE,...]    any importable class

Values are strings; an argument given more than once arrives as a list.
Everything is checked before anything is mounted: the module imports, the
class exists, its hooks name real operations, the arguments fit its
`__init__`, and `__init__` itself succeeds.
"""

from __future__ import annotations

import importlib
import inspect

from fastpass.filters.stack import problems

BUILTINS = {
    "readonly": "fastpass.filters.readonly:ReadOnly",
    "hide": "fastpass.filters.hide:Hide",
    "audit": "fastpass.filters.audit:Audit",
    "quota": "fastpass.filters.quota:Quota",
}
USAGE = f"expected MODULE:CLASS[:ARG=VALUE,...] or one of {', '.join(BUILTINS)}[:ARG=VALUE,...]"


class SpecError(ValueError):
    """A filter spec that cannot be used; the message is one line for the user."""


def parse(spec: str) -> tuple[str, str, dict[str, str | list[str]]]:
    """(module, class, keyword arguments) of a spec."""
    head, sep, rest = spec.partition(":")
    if head in BUILTINS and (not sep or "=" in rest.partition(",")[0]):
        module, cls = BUILTINS[head].split(":")
        text = rest
    else:
        cls, _, text = rest.partition(":")
        module = head
        if not module or not cls.isidentifier():
            raise SpecError(f"--filter {spec!r}: {USAGE}")
    kwargs: dict[str, str | list[str]] = {}
    for part in text.split(",") if text else []:
        key, eq, value = part.partition("=")
        if not eq or not key.isidentifier():
            raise SpecError(f"--filter {spec!r}: {part!r} is not ARG=VALUE")
        old = kwargs.get(key)
        kwargs[key] = value if old is None else [*([old] if isinstance(old, str) else old), value]
    return module, cls, kwargs


def load(spec: str) -> object:
    """Import, check and instantiate the filter a spec names."""
    module_name, cls_name, kwargs = parse(spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecError(f"--filter {spec!r}: cannot import {module_name}: {e}") from None
    cls = getattr(module, cls_name, None)
    if not inspect.isclass(cls):
        raise SpecError(f"--filter {spec!r}: {module_name} has no class {cls_name}")
    wrong = problems(cls)
    if wrong:
        raise SpecError(f"--filter {spec!r}: {'; '.join(wrong)}")
    signature = inspect.signature(cls)
    known = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [k for k in kwargs if k not in known and not takes_any]
    try:
        if unknown:
            raise TypeError(f"no argument {', '.join(unknown)}")
        signature.bind(**kwargs)
    except TypeError as e:
        raise SpecError(f"--filter {spec!r}: {e} (arguments: {', '.join(known) or 'none'})") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, OSError) as e:
        raise SpecError(f"--filter {spec!r}: {e}") from None


def load_all(specs: tuple[str, ...] | list[str]) -> list[object]:
    return [load(spec) for spec in specs]
