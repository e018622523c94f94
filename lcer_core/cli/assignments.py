"""Generic option flags: ``--set name=value`` and ``--grid name=a,b,c``, typed by the method's config.

Values are read as the type of the config field they set (int, float, bool, str; a
``Literal`` takes its text), so that ``--set candidates=4`` is the int 4 and a bad value is
one line naming the option. Which names a method accepts is the config's business
(its declared ``options``), checked where the plan is built.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from lcer_core.errors import InvalidParameterError

__all__ = ["parse_assignments"]

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _field_type(config_type: type, name: str) -> Any:
    hints = typing.get_type_hints(config_type)
    return hints.get(name, str)


def _convert(text: str, kind: Any, name: str, flag: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        if text not in [str(a) for a in typing.get_args(kind)]:
            allowed = ", ".join(str(a) for a in typing.get_args(kind))
            raise InvalidParameterError(f"{flag} {name}: {text!r} is not one of {allowed}")
        return text
    if origin is typing.Union or origin is types.UnionType:
        kinds = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = kinds[0] if kinds else str
    try:
        if kind is bool:
            low = text.strip().lower()
            if low not in _TRUE | _FALSE:
                raise ValueError(text)
            return low in _TRUE
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise InvalidParameterError(
            f"{flag} {name}: {text!r} is not a valid {kind.__name__}"
        ) from None
    return text


def parse_assignments(
    values: Sequence[str] | None, config_type: type, *, flag: str, many: bool
) -> dict[str, Any]:
    """``["name=v", ...]`` as ``{name: value}`` (``many``: ``name=a,b`` as ``{name: [a, b]}``),
    each value typed by ``config_type``'s field; a malformed item is one line naming ``flag``."""
    out: dict[str, Any] = {}
    for item in values or ():
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise InvalidParameterError(f"{flag} takes name=value, got {item!r}")
        if name in out:
            raise InvalidParameterError(f"{flag} {name} is given twice")
        kind = _field_type(config_type, name)
        parts = [p.strip() for p in text.split(",")] if many else [text.strip()]
        if any(not p for p in parts):
            raise InvalidParameterError(f"{flag} {name}: an empty value in {text!r}")
        converted = [_convert(p, kind, name, flag) for p in parts]
        out[name] = converted if many else converted[0]
    return out
