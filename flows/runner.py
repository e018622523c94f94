"""Which task runner runs the explanation shards: threads on this machine, or a Ray cluster.

``threads`` (default) is Prefect's :class:`~prefect.task_runners.ThreadPoolTaskRunner`; its
size comes from ``PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS`` when set, else
:data:`DEFAULT_THREADS`. ``ray`` is
prefect-ray's ``RayTaskRunner`` on the cluster at ``address`` (a local one when None), an
optional dependency (``pip install 'lcer[ray]'``) imported only when asked for, and it needs
a Prefect server (``PREFECT_API_URL``) that the Ray workers report to; explanation
tasks then ask Ray for one GPU each when the cluster has GPUs (a Ray task without
``num_gpus`` sees no CUDA). Deployments pick the runner from the environment of their work
pool: ``LCER_TASK_RUNNER=ray`` and ``LCER_RAY_ADDRESS=...``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from prefect.settings import get_current_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from lcer_core.errors import InvalidParameterError

__all__ = [
    "RUNNERS",
    "DEFAULT_THREADS",
    "make_task_runner",
    "default_task_runner",
    "explain_placement",
]

RUNNERS = ("threads", "ray")
#: Explanation shards run at once by the thread runner unless Prefect's setting says otherwise:
#: each shard already uses every core through torch, more would only compete for memory.
DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 1))

# What a Ray worker needs to find LCER_HOME, the mirror and the tracking store.
_FORWARDED_ENV = (
    "LCER_HOME",
    "LCER_MIRROR",
    "MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT",
)


def make_task_runner(kind: str = "threads", address: str | None = None) -> TaskRunner[Any]:
    """A task runner by name (``threads`` or ``ray``); ``address`` only applies to Ray."""
    if kind not in RUNNERS:
        raise InvalidParameterError(f"--runner must be one of {', '.join(RUNNERS)}, got {kind!r}")
    if kind == "threads":
        if address:
            raise InvalidParameterError("--address only applies with --runner ray")
        configured = get_current_settings().tasks.runner.thread_pool_max_workers
        return ThreadPoolTaskRunner(max_workers=configured or DEFAULT_THREADS)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise InvalidParameterError(
            "--runner ray needs the optional dependency prefect-ray: pip install 'lcer[ray]'"
        ) from None
    if not get_current_settings().api.url:
        # In embedded mode every Ray worker would start a temporary server of its own.
        raise InvalidParameterError(
            "--runner ray needs a Prefect server the Ray workers can reach: "
            "start one (prefect server start) and set PREFECT_API_URL"
        )
    env = {name: os.environ[name] for name in _FORWARDED_ENV if os.environ.get(name)}
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    if not address:
        init_kwargs["include_dashboard"] = False
    return RayTaskRunner(address=address or None, init_kwargs=init_kwargs)


def default_task_runner() -> TaskRunner[Any]:
    """The runner named by ``LCER_TASK_RUNNER`` (default ``threads``) at ``LCER_RAY_ADDRESS``."""
    kind = os.environ.get("LCER_TASK_RUNNER", "threads").strip() or "threads"
    address = os.environ.get("LCER_RAY_ADDRESS", "").strip() or None
    return make_task_runner(kind, address if kind == "ray" else None)


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


@contextlib.contextmanager
def explain_placement() -> Iterator[str]:
    """Around the submission of explanation tasks: one GPU per task on a Ray cluster that has GPUs.

    Yields where the tasks go (``threads``, ``ray`` or ``ray-gpu``), for the log.
    """
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    if runner is None or type(runner).__name__ != "RayTaskRunner":
        yield "threads"
        return
    if _cluster_gpus() < 1:
        yield "ray"
        return
    from prefect_ray.context import remote_options

    with remote_options(num_gpus=1):
        yield "ray-gpu"
