"""Explainers from other distributions: the entry-point group ``lcer.explainers``.

A distribution declares ``name = "module:Class"`` under ``[project.entry-points."lcer.explainers"]``
(the entry point's name is the method's name); :func:`load_plugins` imports each one and
hands the class to ``register``. A plugin that does not import, is not an
:class:`~lcer_core.explainers.base.Explainer` subclass, is registered under another name
than its own, claims a built-in method's name, or replaces a built-in method while it is
imported is a one-line :class:`~lcer_core.errors.LcerError` naming it and its distribution
(a built-in name is refused before the plugin's module is imported; the built-in stays).
Each plugin loaded is a :class:`Plugin` (method name, distribution, version), which every
stored run records.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from lcer_core.errors import LcerError
from lcer_core.explainers.base import Explainer

__all__ = ["GROUP", "Plugin", "load_plugins", "plugin_entry_points"]

#: The entry-point group plugins declare their explainers under.
GROUP = "lcer.explainers"


@dataclass(frozen=True)
class Plugin:
    """One loaded plugin explainer: its method name, class and the distribution declaring it."""

    name: str
    cls: type[Explainer]
    distribution: str | None
    version: str | None

    def record(self) -> dict[str, str | None]:
        """What a stored run keeps of it: ``{"name", "distribution", "version"}``."""
        return {"name": self.name, "distribution": self.distribution, "version": self.version}


def plugin_entry_points() -> list[EntryPoint]:
    """The installed distributions' entry points of :data:`GROUP`, sorted by name."""
    return sorted(entry_points(group=GROUP), key=lambda ep: (ep.name, ep.value))


def _distribution(ep: EntryPoint) -> tuple[str | None, str | None]:
    """(name, version) of the distribution declaring ``ep``; None where unknown."""
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else (None, None)


def _where(ep: EntryPoint) -> str:
    name, version = _distribution(ep)
    dist = f", from {name}{f' {version}' if version else ''}" if name else ""
    return f"explainer plugin {ep.name!r} ({ep.value}{dist})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _importing(module: str) -> bool:
    """Whether ``module`` is being imported right now (it imported lcer_core.explainers first)."""
    spec = getattr(sys.modules.get(module), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _replaced(builtins: Mapping[str, type[Explainer]], methods: Mapping[str, Any]) -> list[str]:
    return sorted(n for n, cls in builtins.items() if methods.get(n) is not cls)


def load_plugins(
    register: Callable[[type[Explainer]], Any],
    *,
    builtins: Mapping[str, type[Explainer]] | None = None,
    methods: MutableMapping[str, Any] | None = None,
) -> list[Plugin]:
    """Import every plugin explainer and ``register`` it; returns the plugins in name order.

    ``builtins`` (name -> class) are the names no plugin may take: such an entry point is refused
    before its module is imported; ``methods`` (the registry) is checked after each import, and
    a built-in a plugin replaced is put back before its refusal is raised.
    A plugin whose own module is still being imported (it imported ``lcer_core.explainers``,
    which called this) is left out rather than imported in a circle; calling this again once
    that import is over registers it (``register`` must accept a class it already holds).
    """
    builtins = dict(builtins or {})
    loaded: list[Plugin] = []
    for ep in plugin_entry_points():
        if ep.name in builtins:
            raise LcerError(f"{_where(ep)} may not take the built-in method name {ep.name!r}")
        if _importing(ep.module):
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
            raise LcerError(f"{_where(ep)} failed to import: {_one_line(exc)}") from None
        if methods is not None and (replaced := _replaced(builtins, methods)):
            methods.update({n: builtins[n] for n in replaced})
            raise LcerError(f"{_where(ep)} replaced the built-in method(s) {', '.join(replaced)}")
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise LcerError(f"{_where(ep)} is not an Explainer subclass: {cls!r}")
        if getattr(cls, "name", None) != ep.name:
            raise LcerError(
                f"{_where(ep)} names its class {getattr(cls, 'name', None)!r}, not {ep.name!r}"
            )
        try:
            register(cls)
        except (LcerError, ValueError, TypeError) as exc:  # e.g. a name already taken
            raise LcerError(f"{_where(ep)} cannot be registered: {_one_line(exc)}") from None
        loaded.append(Plugin(ep.name, cls, *_distribution(ep)))
    return loaded
