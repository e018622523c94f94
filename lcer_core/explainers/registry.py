"""The explainer registry: every explanation method by its name in the CLI, the flows and the store.

A method registers itself with the :func:`register` class decorator in its own module (a
plugin distribution through the ``lcer.explainers`` entry-point group); :func:`get_method` is
the one place that refuses an unknown name. The package seals the built-in methods
(:func:`seal_builtins`) before it loads the plugins, so that none takes or replaces one;
:func:`loaded_plugins` is what a stored run records of the plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from lcer_core.errors import InvalidParameterError, UnknownMethodError
from lcer_core.paper import SUBJECT_METHOD

if TYPE_CHECKING:
    from lcer_core.explainers.base import Explainer
    from lcer_core.explainers.plugins import Plugin

__all__ = [
    "METHODS",
    "PAPER_METHODS",
    "PAPER_SWEEP_METHOD",
    "register",
    "get_method",
    "load_plugins",
    "loaded_plugins",
    "seal_builtins",
]

#: Every registered explanation method by name.
METHODS: dict[str, type[Explainer]] = {}

#: The built-in methods by name (:func:`seal_builtins`): names no plugin may take.
BUILTINS: dict[str, type[Explainer]] = {}

#: The plugins loaded into :data:`METHODS`, by method name.
PLUGINS: dict[str, Plugin] = {}

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


def seal_builtins() -> None:
    """Mark every method registered so far as built-in (the package calls it before plugins)."""
    BUILTINS.update(METHODS)


def load_plugins() -> list[type[Explainer]]:
    """Register the explainers that installed distributions declare under the entry-point group
    ``lcer.explainers`` (see :mod:`lcer_core.explainers.plugins`); a broken one, or one taking
    or replacing a built-in method, is one line."""
    from lcer_core.explainers.plugins import load_plugins as load

    plugins = load(register, builtins=BUILTINS, methods=METHODS)
    PLUGINS.update({p.name: p for p in plugins})
    return [p.cls for p in plugins]


def loaded_plugins() -> list[dict[str, Any]]:
    """The plugins loaded in this process, ``[{"name", "distribution", "version"}]`` by name."""
    return [PLUGINS[name].record() for name in sorted(PLUGINS)]
