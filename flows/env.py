"""The flows' environment: Prefect's settings for a flow started from the command line
(:func:`prefect_environment`, called before Prefect is imported) and a guard for deployments
(:func:`check_environment`). Imports no Prefect.
"""

from __future__ import annotations

import os

from lcer_core import paths
from lcer_core.errors import LcerHomeError, OrchestrationError
from lcer_core.settings import settings

__all__ = ["check_environment", "prefect_environment"]


def prefect_environment() -> None:
    """Keep Prefect's state under LCER_HOME unless the user configured it (PREFECT_HOME: the
    embedded server's database), and persist no task result anywhere: a persisted result is a
    pickle that names its own serializer, so reading a planted one runs code (the shard files
    are the pipeline's records). Call before importing prefect."""
    home = paths.lcer_home()
    prefect_home = home / "prefect-home"
    try:
        prefect_home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LcerHomeError(f"cannot write {prefect_home}: {exc.strerror or exc}") from exc
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "false"
    # The embedded server can take longer than Prefect's default 20 s to start on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # No telemetry from an offline machine; its write at start-up races the server's own
    # SQLite writes and prints a "database is locked" traceback (prefect#19771).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Nor from the client, whose first run on a terminal prints a three-line notice about it.
    os.environ.setdefault("DO_NOT_TRACK", "1")


def check_environment() -> None:
    """Refuse to run with an unexpanded ``{{ $VAR }}`` in LCER_HOME or LCER_REPO (unset at deploy time)."""
    env = settings()
    for name, value in (("LCER_HOME", env.home), ("LCER_REPO", env.repo)):
        if value is not None and "{{" in value:
            raise OrchestrationError(
                f"{name} was not set when this deployment was made (it reads {value!r}): "
                f"deploy again with {name}=/absolute/path prefect --no-prompt deploy --all"
            )
