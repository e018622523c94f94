"""In-process progress events from flows and tasks, for whoever listens (the ``lcer`` terminal line).

Tasks report through Prefect's logger in any case; these events are only a courtesy to a
terminal in the same process (``lcer run`` with the thread runner). Under a worker, or on a
Ray cluster, nobody listens and :func:`emit` costs nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Listener", "emit", "listen"]

#: ``listener(event, fields)``: ``event`` is ``planned`` (``shards``, ``runs``), ``run_planned``
#: (``run``, ``label``, ``shard_pairs``: pairs per shard), ``shard_done`` (``run``, ``index``),
#: ``steps`` (``run``, ``index``, ``done``, ``total``) or ``epoch`` (``dataset``, ``epoch``,
#: ``epochs``, ``val_ndcg100``).
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
