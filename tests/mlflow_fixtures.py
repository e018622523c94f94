"""Fixtures for tests that need an MLflow store: a schema migrated once, copied per test.

Import the ``*_fixture`` names into a test module to make ``store`` available there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks import mlflow_client

__all__ = ["mlflow_template_db_fixture", "store_fixture"]


@pytest.fixture(scope="session", name="mlflow_template_db")
def mlflow_template_db_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database with its schema created once per session (migrations take seconds)."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture(name="store")
def store_fixture(lcer_home: Path, mlflow_template_db: Path) -> MlflowClient:
    """A fresh tracking store under LCER_HOME/mlflow (a copy of the migrated template)."""
    target = lcer_home / "mlflow" / "mlflow.db"
    target.parent.mkdir(parents=True)
    shutil.copyfile(mlflow_template_db, target)
    uri = mlflow_client.configure()
    assert uri == f"sqlite:///{target}" and uri.startswith("sqlite:////")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
