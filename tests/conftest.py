"""Shared fixtures: an isolated LCER_HOME, and the dataset mirror served over loopback HTTP."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


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
