"""The explainer registry: every explanation method by its name in the CLI, the flows and the store.

A method registers itself with the :func:`register` class decorator in its own module (a
plugin distribution through the ``lcer.explainers`` entry-point group); :func:`get_method` is
the one place that refuses an unknown name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from lcer_core.errors import InvalidParameterError, UnknownMethodError
from lcer_core.paper import SUBJECT_METHOD

if TYPE_CHECKING:
    from lcer_core.explainers.base import Explainer

__all__ = [
    "METHODS",
    "PAPER_METHODS",
    "PAPER_SWEEP_METHOD",
    "register",
    "get_method",
    "load_plugins",
]

#: Every registered explanation method by name.
METHODS: dict[str, type[Explainer]] = {}

#: The paper's four methods: what the pipeline runs when no methods are given.
PAPER_METHODS: tuple[str, ...] = ("lcer", "fia", "accent", "kaffes")

#: The method of the paper's α/λ sweep (section 4.1, Figures 8 and 9): ``lcer sweep``'s.
PAPER_SWEEP_METHOD = SUBJECT_METHOD

E = TypeVar("E", bound="type[Explainer]")


def register(cls: E) -> E:
    """Class decorator: register an explainer under its ``name`` (a taken name is refused)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"explainer {cls.__qualname__} has no name")
    taken = METHODS.get(name)
    if taken is not None and taken is not cls:
        raise InvalidParameterError(
            f"method name {name!r} of {cls.__module__}.{cls.__qualname__} is taken by "
            f"{taken.__module__}.{taken.__qualname__}"
        )
    METHODS[name] = cls
    return cls


def get_method(name: str) -> type[Explainer]:
    """The explainer class registered as ``name``; an unknown name is a one-line error."""
    cls = METHODS.get(name) if isinstance(name, str) else None
    if cls is None and isinstance(name, str):
        load_plugins()  # a plugin left out at import (it was importing lcer_core itself)
        cls = METHODS.get(name)
    if cls is None:
        raise UnknownMethodError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return cls


def load_plugins() -> list[type[Explainer]]:
    """Register the explainers that installed distributions declare under the entry-point group
    ``lcer.explainers`` (see :mod:`lcer_core.explainers.plugins`); a broken one is one line."""
    from lcer_core.explainers.plugins import load_plugins as load

    return load(register)
