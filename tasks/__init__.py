"""Prefect tasks, thin: each calls lcer_core, logs, and hands files on.

MLflow sends anonymous usage data unless told otherwise, and decides when it is first
imported (by :mod:`tasks.mlflow_client`): it is turned off here, before that, as Prefect's is.
"""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
