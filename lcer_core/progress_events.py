"""In-process progress events: the protocol between the tasks that work and a display that shows it.

Framework-free: tasks (through :mod:`tasks.progress`) call :func:`emit`; the ``lcer`` terminal
display (:mod:`lcer_core.cli.progress`) receives them with :func:`listen`. Tasks report through
Prefect's logger in any case; these events are only a courtesy to a terminal in the same
process (``lcer run`` with the thread runner). Under a worker, or on a Ray cluster, nobody
listens and :func:`emit` costs nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "Listener",
    "emit",
    "listen",
    "PLANNED",
    "RUN_PLANNED",
    "SHARD_DONE",
    "STEPS",
    "EPOCH",
    "EVENTS",
]

#: The explanation shards and runs about to run: ``shards``, ``runs``.
PLANNED = "planned"
#: One run about to run: ``run`` (its id), ``label``, ``shard_pairs`` (pairs per shard).
RUN_PLANNED = "run_planned"
#: A shard ended: ``run``, ``index``, ``ok``.
SHARD_DONE = "shard_done"
#: Pairs explained so far in a shard: ``run``, ``index``, ``done``, ``total``.
STEPS = "steps"
#: A training epoch ended: ``dataset``, ``epoch``, ``epochs``, ``val_ndcg100``, ``recommender``
#: (its kind's title).
EPOCH = "epoch"
EVENTS = (PLANNED, RUN_PLANNED, SHARD_DONE, STEPS, EPOCH)

#: ``listener(event, fields)``: ``event`` is one of :data:`EVENTS`, ``fields`` its keywords.
Listener = Callable[[str, dict[str, Any]], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """Tell every listener of this process about ``event``; a listener's error never reaches the caller."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        # A broken progress display must not break the pipeline.
        with contextlib.suppress(Exception):
            listener(event, fields)


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Receive the events emitted in this process while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
