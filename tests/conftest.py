"""Shared fixtures: an isolated LCER_HOME, and the dataset mirror served over loopback HTTP."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
_MIRROR = os.environ.get("LCER_MIRROR", "")
# The mirror folder: LCER_MIRROR when it is a file:// URL (a worktree elsewhere), else ../shared.
SHARED_DATASETS = (
    Path(unquote(urlparse(_MIRROR).path))
    if _MIRROR.startswith("file://")
    else REPO.parent / "shared" / "datasets"
)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


def serve_directory(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start a loopback HTTP server over ``directory``; returns (server, base URL)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "ml-100k.zip").is_file():
        pytest.fail(f"dataset mirror not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def http_mirror(shared_datasets: Path) -> Iterator[str]:
    """Base URL of a real HTTP server on loopback serving ../shared/datasets."""
    server, url = serve_directory(shared_datasets)
    yield url
    server.shutdown()


@pytest.fixture()
def lcer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty LCER_HOME for one test (and no ambient MLflow/Prefect settings)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LCER_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, http_mirror: str) -> Path:
    """An LCER_HOME with ML 100K prepared (over the loopback mirror) and a small Mult-VAE
    trained (10 epochs): shared, read-mostly state for tests of the commands built on them."""
    import os

    from lcer_core import models
    from lcer_core.datasets import ensure_prepared
    from lcer_core.recommender.multvae import MultVAEConfig

    home = tmp_path_factory.mktemp("trained-home")
    saved = {k: os.environ.get(k) for k in ("LCER_HOME", "LCER_MIRROR")}
    os.environ["LCER_HOME"], os.environ["LCER_MIRROR"] = str(home), http_mirror
    try:
        data = ensure_prepared("ml-100k")
        models.train_model(data, MultVAEConfig(epochs=10), seed=1, device="cpu")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return home


@pytest.fixture()
def in_trained_home(trained_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LCER_HOME", str(trained_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return trained_home


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's S3 API server on loopback, shared by the session (``tests/s3_fixtures.py``);
    the tests that need it are skipped where moto or s3fs is not installed (``lcer[dev]``)."""
    import importlib.util

    missing = [m for m in ("moto", "s3fs") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[dev]')")
    from s3_fixtures import s3_server as start

    with start(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server
