"""Explainers from other distributions: the entry-point group ``lcer.explainers``.

A distribution declares ``name = "module:Class"`` under ``[project.entry-points."lcer.explainers"]``
(the entry point's name is the method's name); :func:`load_plugins` imports each one and
hands the class to ``register``. A plugin that does not import, is not an
:class:`~lcer_core.explainers.base.Explainer` subclass, or is registered under another name
than its own is a one-line :class:`~lcer_core.errors.LcerError` naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from lcer_core.errors import LcerError
from lcer_core.explainers.base import Explainer

__all__ = ["GROUP", "load_plugins", "plugin_entry_points"]

#: The entry-point group plugins declare their explainers under.
GROUP = "lcer.explainers"


def plugin_entry_points() -> list[EntryPoint]:
    """The installed distributions' entry points of :data:`GROUP`, sorted by name."""
    return sorted(entry_points(group=GROUP), key=lambda ep: (ep.name, ep.value))


def _where(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"explainer plugin {ep.name!r} ({ep.value}{f', from {dist.name}' if dist else ''})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _importing(module: str) -> bool:
    """Whether ``module`` is being imported right now (it imported lcer_core.explainers first)."""
    spec = getattr(sys.modules.get(module), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def load_plugins(register: Callable[[type[Explainer]], Any]) -> list[type[Explainer]]:
    """Import every plugin explainer and ``register`` it; returns the classes in name order.

    A plugin whose own module is still being imported (it imported ``lcer_core.explainers``,
    which called this) is left out rather than imported in a circle; calling this again once
    that import is over registers it (``register`` must accept a class it already holds).
    """
    loaded: list[type[Explainer]] = []
    for ep in plugin_entry_points():
        if _importing(ep.module):
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
            raise LcerError(f"{_where(ep)} failed to import: {_one_line(exc)}") from None
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
        loaded.append(cls)
    return loaded
