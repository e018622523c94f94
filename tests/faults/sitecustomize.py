"""Fault injection for the tests, from outside the product: put this folder on ``PYTHONPATH``.

Python imports ``sitecustomize`` at start-up; when an environment variable below is set, this
module wraps a product function once its module is imported (the product has no test hook):

- ``LCER_FAULT_HOLD_WRITE=SECONDS``: ``ResultStore.write_run`` holds its DuckDB transaction
  open for that long just before ``COMMIT`` (every row written, none committed), after
  printing ``LCER_FAULT_HOLD_WRITE: holding the write transaction of run RUN_ID``, so that a
  test can kill the process in the middle of the write.
- ``LCER_FAULT_SLOW_SHARD=SECONDS``: a remote explanation shard (``tasks.explain``
  ``explain-shard-remote``, which logs ``started on node N pid P`` first) sleeps that long
  before opening its model and data, so that a test can kill the Ray worker running it. Set it
  on the ``ray start`` nodes: their workers inherit the environment and this ``PYTHONPATH``.

Nothing happens when neither is set, so the folder is harmless on any process's path.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

HOLD_WRITE_ENV = "LCER_FAULT_HOLD_WRITE"
SLOW_SHARD_ENV = "LCER_FAULT_SLOW_SHARD"


def _seconds(name: str) -> float:
    text = os.environ.get(name, "").strip()
    return float(text) if text else 0.0


def _say(line: str) -> None:
    stream = sys.__stderr__ or sys.stderr
    stream.write(line + "\n")
    stream.flush()


# --------------------------------------------------------------------------- the DuckDB write

_writing: contextvars.ContextVar[str | None] = contextvars.ContextVar("lcer_writing", default=None)


class _HoldCommit:
    """A DuckDB connection whose ``COMMIT`` waits while a ``write_run`` is under way."""

    def __init__(self, con: Any, seconds: float) -> None:
        self._con = con
        self._seconds = seconds

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        run_id = _writing.get()
        if run_id is not None and sql.strip().upper().startswith("COMMIT"):
            _say(f"{HOLD_WRITE_ENV}: holding the write transaction of run {run_id} open")
            time.sleep(self._seconds)
        return self._con.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def _patch_store(module: Any) -> None:
    seconds = _seconds(HOLD_WRITE_ENV)
    store = module.ResultStore
    write_run, connection = store.write_run, store._connection

    @functools.wraps(write_run)
    def held_write_run(self: Any, run: Any, *args: Any, **kwargs: Any) -> Any:
        token = _writing.set(str(run.get("run_id")))
        try:
            return write_run(self, run, *args, **kwargs)
        finally:
            _writing.reset(token)

    @contextlib.contextmanager
    def held_connection(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with connection(self, *args, **kwargs) as con:
            yield _HoldCommit(con, seconds) if _writing.get() is not None else con

    store.write_run = held_write_run
    store._connection = held_connection


# --------------------------------------------------------------------------- a remote shard


def _patch_remote(module: Any) -> None:
    seconds = _seconds(SLOW_SHARD_ENV)
    open_bundle = module.open_bundle

    @functools.wraps(open_bundle)
    def slow_open_bundle(*args: Any, **kwargs: Any) -> Any:
        _say(f"{SLOW_SHARD_ENV}: shard in pid {os.getpid()} waits {seconds:g} s")
        time.sleep(seconds)
        return open_bundle(*args, **kwargs)

    module.open_bundle = slow_open_bundle


# --------------------------------------------------------------------------- import hook


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch on a module right after it is first imported."""

    def __init__(self, patches: dict[str, Callable[[Any], None]]) -> None:
        self.patches = patches

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        patch = self.patches.pop(name, None)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


_patches: dict[str, Callable[[Any], None]] = {}
if _seconds(HOLD_WRITE_ENV) > 0:
    _patches["lcer_core.store.store"] = _patch_store
if _seconds(SLOW_SHARD_ENV) > 0:
    _patches["lcer_core.remote"] = _patch_remote
if _patches:
    sys.meta_path.insert(0, _AfterImport(_patches))
