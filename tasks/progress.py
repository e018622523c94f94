"""Progress events from flows and tasks, for whoever listens (the ``lcer`` terminal line).

The protocol (event names, fields, :func:`emit`, :func:`listen`) is framework-free and lives in
:mod:`lcer_core.progress_events`; tasks and flows emit through this module.
"""

from __future__ import annotations

from lcer_core.progress_events import (
    EPOCH,
    PLANNED,
    RUN_PLANNED,
    SHARD_DONE,
    STEPS,
    Listener,
    emit,
    listen,
)

__all__ = ["Listener", "emit", "listen", "PLANNED", "RUN_PLANNED", "SHARD_DONE", "STEPS", "EPOCH"]
