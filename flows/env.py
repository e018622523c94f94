"""A guard for deployments: the environment that ``prefect.yaml`` templates must have been set when deploying."""

from __future__ import annotations

import os

from lcer_core.errors import OrchestrationError

__all__ = ["check_environment"]


def check_environment() -> None:
    """Refuse to run with an unexpanded ``{{ $VAR }}`` in LCER_HOME or LCER_REPO (unset at deploy time)."""
    for name in ("LCER_HOME", "LCER_REPO"):
        value = os.environ.get(name, "")
        if "{{" in value:
            raise OrchestrationError(
                f"{name} was not set when this deployment was made (it reads {value!r}): "
                f"deploy again with {name}=/absolute/path prefect --no-prompt deploy --all"
            )
