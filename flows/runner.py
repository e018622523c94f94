"""Which task runner runs the explanation shards: threads on this machine, or a Ray cluster.

``threads`` (default) is Prefect's :class:`~prefect.task_runners.ThreadPoolTaskRunner`; its
size comes from ``PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS`` when set, else
:data:`DEFAULT_THREADS`. ``ray`` is
prefect-ray's ``RayTaskRunner`` on the cluster at ``address`` (a local one when None), an
optional dependency (``pip install 'lcer[ray]'``) imported only when asked for, and it needs
a Prefect server (``PREFECT_API_URL``) that the Ray workers report to; LCER's explanation
tasks then ask Ray for one GPU each when the cluster has GPUs (a Ray task without
``num_gpus`` sees no CUDA), the baselines' only for a CPU. Deployments pick the runner from the environment of their work
pool: ``LCER_TASK_RUNNER=ray`` and ``LCER_RAY_ADDRESS=...``.

Ray workers share no filesystem with the flow: they get what a shard needs through Ray's
object store and send the shard back the same way (see :mod:`flows.explain`), so nothing of
``LCER_HOME`` is forwarded to them. Before submitting, the cluster is checked for the
resources the tasks will ask for (a CPU each; one GPU more for LCER's shards when the cluster
has GPUs): a cluster that lacks them is a one-line error, not a run that waits forever.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lcer_core.errors import InvalidParameterError

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

__all__ = [
    "RUNNERS",
    "DEFAULT_THREADS",
    "check_runner",
    "make_task_runner",
    "default_task_runner",
    "explain_placement",
    "missing_resources",
    "is_ray_runner",
]

RUNNERS = ("threads", "ray")
#: Explanation shards run at once by the thread runner unless Prefect's setting says otherwise:
#: one per core (each shard computes with ``lcer_core.devices.ANSWER_THREADS`` thread, so that
#: answers do not depend on the cores), at most 8 so that memory stays that of 8 shards.
DEFAULT_THREADS = max(1, min(8, os.cpu_count() or 1))

# What a Ray worker needs from the flow's environment: the Prefect server it reports to, no
# pickled results. Not LCER_HOME: the worker may be another machine.
_FORWARDED_ENV = ("PREFECT_API_URL", "PREFECT_RESULTS_PERSIST_BY_DEFAULT")


def _check_choice(kind: str, address: str | None) -> None:
    if kind not in RUNNERS:
        raise InvalidParameterError(
            f"runner must be one of {', '.join(RUNNERS)}, got {kind!r}", param="runner"
        )
    if address and kind != "ray":
        raise InvalidParameterError("--address only applies with --runner ray")


def _check_address(address: str | None) -> None:
    if address:
        from lcer_core.remote import check_address

        check_address(address)


def check_runner(kind: str, address: str | None = None) -> None:
    """Refuse an unknown runner, an address without Ray, or an address where no cluster answers
    (one line each). Imports neither Prefect nor Ray: the command line calls it before Prefect
    starts."""
    _check_choice(kind, address)
    _check_address(address)


def make_task_runner(
    kind: str = "threads", address: str | None = None, methods: Sequence[str] | None = None
) -> TaskRunner[Any]:
    """A task runner by name (``threads`` or ``ray``); ``address`` only applies to Ray.

    With ``methods`` (the command line knows them), Ray is started or joined now and the
    cluster checked for what those methods' tasks will ask for: a one-line error before the
    flow starts rather than a failed flow run.
    """
    from prefect.settings import get_current_settings
    from prefect.task_runners import ThreadPoolTaskRunner

    _check_choice(kind, address)
    if kind == "threads":
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
    _check_address(address)
    # Ray folds log lines that differ only in numbers (a shard's retry, other shards) into one.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    env = {name: os.environ[name] for name in _FORWARDED_ENV if os.environ.get(name)}
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    init_kwargs["logging_level"] = "WARNING"  # not Ray's start-up chatter on the terminal
    if not address:
        init_kwargs["include_dashboard"] = False
    runner = RayTaskRunner(address=address or None, init_kwargs=init_kwargs)
    if methods is not None:
        _join_and_check(runner, list(methods))
    return runner


def _join_and_check(runner: Any, methods: list[str]) -> None:
    import ray

    if not ray.is_initialized():  # the runner then uses this connection
        try:
            ray.init(*([runner.address] if runner.address else []), **runner.init_kwargs)
        except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            where = f"at {runner.address}" if runner.address else "on this machine"
            raise InvalidParameterError(f"cannot join the Ray cluster {where}: {first}") from None
    check_cluster(methods)


def default_task_runner() -> TaskRunner[Any]:
    """The runner named by ``LCER_TASK_RUNNER`` (default ``threads``) at ``LCER_RAY_ADDRESS``."""
    kind = os.environ.get("LCER_TASK_RUNNER", "threads").strip() or "threads"
    address = os.environ.get("LCER_RAY_ADDRESS", "").strip() or None
    return make_task_runner(kind, address if kind == "ray" else None)


def is_ray_runner() -> bool:
    """Whether the current flow run submits its tasks to Ray."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    return runner is not None and type(runner).__name__ == "RayTaskRunner"


def missing_resources(nodes: Sequence[Mapping[str, Any]], gpu_tasks: bool) -> str | None:
    """What the cluster of ``nodes`` (as ``ray.nodes()`` lists them) lacks for the explanation
    tasks, in words, or None: every task needs a CPU; with ``gpu_tasks``, one node must have a
    GPU and a CPU together."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", n.get("alive", False))]
    if not alive:
        return "the Ray cluster has no live node"
    cpus = sum(float(r.get("CPU", 0)) for r in alive)
    if cpus < 1:
        return f"the Ray cluster has no CPU ({len(alive)} node(s), 0 CPUs): every explanation task needs one"
    if gpu_tasks and not any(
        float(r.get("GPU", 0)) >= 1 and float(r.get("CPU", 0)) >= 1 for r in alive
    ):
        return (
            "the Ray cluster has GPUs but no node with both a GPU and a CPU, "
            "which LCER's explanation tasks ask for"
        )
    return None


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def check_cluster(methods: Sequence[str]) -> bool:
    """On Ray: refuse a cluster that lacks what the tasks of ``methods`` ask for; whether LCER's
    tasks ask for a GPU (they do when the cluster has one)."""
    import ray

    from lcer_core.remote import wants_gpu

    gpu_tasks = _cluster_gpus() >= 1 and any(wants_gpu(m) for m in methods)
    problem = missing_resources(ray.nodes(), gpu_tasks)
    if problem:
        raise InvalidParameterError(problem)
    return gpu_tasks


@contextlib.contextmanager
def explain_placement(gpu: bool) -> Iterator[str]:
    """Around the submission of one explanation task: one GPU for it when ``gpu`` (on Ray).

    Yields where the task goes (``threads``, ``ray`` or ``ray-gpu``), for the log.
    """
    if not is_ray_runner():
        yield "threads"
        return
    if not gpu:
        yield "ray"
        return
    from prefect_ray.context import remote_options

    with remote_options(num_gpus=1):
        yield "ray-gpu"
