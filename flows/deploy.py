"""Deployments that run a pinned version of the code, wherever their workers are.

``prefect deploy`` runs :func:`pinned_source` (a build step of ``prefect.yaml``) in the
checkout it deploys from: the repository URL that workers clone, the commit checked out and
the code version (:func:`lcer_core.code_version.code_version`), which the deployment records
as its ``version``. Every flow run then starts with a ``git_clone`` of that commit in the
worker's own temporary folder, so a worker in any folder runs exactly the deployed code.
:func:`check_deployment_code` lets a pipeline refuse, before any work, a deployment whose
recorded version is not its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lcer_core.code_version import PACKAGES, code_version, same_code
from lcer_core.errors import InvalidParameterError, OrchestrationError
from lcer_core.settings import settings

__all__ = ["REPOSITORY_ENV", "pinned_source", "check_deployment_code"]

#: The repository URL workers clone (default: the checkout's ``origin``, else its own path).
REPOSITORY_ENV = "LCER_GIT_URL"
_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"git {' '.join(args)} failed in {_ROOT}: {done.stderr.strip()}")
    return done.stdout.strip()


def pinned_source() -> dict[str, str]:
    """A ``prefect.yaml`` build step: ``repository``, ``commit`` and ``code_version`` of the
    checkout being deployed; a checkout with uncommitted changes to the code is refused (the
    workers would run the commit, not the edits)."""
    try:
        commit = _git("rev-parse", "HEAD")
    except ValueError:
        raise ValueError(
            f"{_ROOT} is not a git checkout: deployments clone the deployed commit"
        ) from None
    if _git("status", "--porcelain", "--", *PACKAGES):
        raise ValueError(
            f"{_ROOT} has uncommitted changes in {', '.join(PACKAGES)}: commit them first "
            "(workers run the deployed commit, not the edits)"
        )
    repository = settings().git_url or ""
    if not repository:
        try:
            repository = _git("remote", "get-url", "origin")
        except ValueError:
            repository = str(_ROOT)  # one machine, or a path every worker mounts
    return {"repository": repository, "commit": commit, "code_version": code_version(_ROOT)}


def check_deployment_code(name: str) -> None:
    """Refuse, in one line, a deployment whose recorded code version is not this process's."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise InvalidParameterError(
                f"no deployment {name} on the Prefect server: deploy it (prefect --no-prompt "
                "deploy --all) or check the name (FLOW/DEPLOYMENT)",
                param="explain_deployment",
            ) from None
        except ValueError as exc:  # a name without "/"
            raise InvalidParameterError(
                f"explain_deployment must be FLOW/DEPLOYMENT, got {name!r}: {exc}",
                param="explain_deployment",
            ) from None
    mine = code_version()
    theirs = deployment.version
    if not theirs or "+src." not in theirs:
        raise OrchestrationError(
            f"deployment {name} records no lcer code version (deployed by an earlier version): "
            "deploy again (prefect --no-prompt deploy --all)"
        )
    if not same_code(theirs, mine):
        raise InvalidParameterError(
            f"deployment {name} runs lcer {theirs}, this pipeline is lcer {mine}: deploy this "
            "commit (prefect --no-prompt deploy --all) or run the deployed one",
            param="explain_deployment",
        )
