"""The commands of ``lcer``, in the order ``lcer --help`` lists them.

Each is a plain function of its module (its options are its parameters, its help its
docstring); :func:`lcer_core.cli.app.build_app` registers them on the Typer application.
Importing a command module registers nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lcer_core.cli import (
    bench,
    data,
    environment,
    explainer_model,
    mlflow_ui,
    model,
    pipeline,
    results,
    tune,
)

__all__ = ["COMMANDS"]

COMMANDS: tuple[Callable[..., Any], ...] = (
    bench.bench,
    data.prepare,
    data.stats,
    data.synth,
    model.explain,
    pipeline.run,
    pipeline.sweep,
    pipeline.train,
    explainer_model.train_explainer,
    results.sql,
    results.report,
    tune.tune,
    mlflow_ui.ui,
    environment.settings,
)
