"""Where things live: one place for every path and location derived from the environment.

``LCER_HOME`` (default: the current folder) holds ``data/``, ``results/lcer.duckdb``
and ``mlflow/``; ``MLFLOW_TRACKING_URI`` overrides the tracking store and
``LCER_MIRROR`` replaces the official dataset hosts (read through
:func:`lcer_core.settings.settings`, imported when first asked: ``lcer --help`` loads no
pydantic).
"""

from __future__ import annotations

import os
from pathlib import Path

from lcer_core.errors import LcerHomeError

__all__ = [
    "lcer_home",
    "data_dir",
    "dataset_dir",
    "results_db",
    "mlflow_dir",
    "mlflow_tracking_uri",
    "models_dir",
    "mirror_base",
]


def lcer_home() -> Path:
    """The root folder of all state, absolute; :class:`LcerHomeError` if there is none."""
    from lcer_core.settings import settings

    raw = settings().home
    try:
        base = raw or os.getcwd()
    except OSError:  # the current folder was deleted
        raise LcerHomeError(
            "LCER_HOME is not set and the current folder no longer exists: "
            "change to a folder that exists or set LCER_HOME"
        ) from None
    try:
        return Path(base).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a deleted current folder
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LcerHomeError(f"cannot use LCER_HOME {base!r}: {reason}") from None


def data_dir() -> Path:
    return lcer_home() / "data"


def dataset_dir(name: str) -> Path:
    """Folder of one dataset: raw archives under ``raw/``, prepared Parquet beside."""
    return data_dir() / name


def results_db() -> Path:
    return lcer_home() / "results" / "lcer.duckdb"


def models_dir() -> Path:
    """Trained recommender checkpoints, one folder per model key."""
    return lcer_home() / "models"


def mlflow_dir() -> Path:
    return lcer_home() / "mlflow"


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute SQLite store under ``LCER_HOME/mlflow``."""
    from lcer_core.settings import settings

    uri = settings().mlflow_tracking_uri
    if uri:
        return uri
    return f"sqlite:///{mlflow_dir() / 'mlflow.db'}"


def mirror_base() -> str | None:
    """Base URL that replaces the official dataset hosts (``http://``, ``https://`` or
    ``file://``, no trailing slash), or None."""
    from lcer_core.settings import settings

    return settings().mirror
