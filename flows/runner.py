"""Which task runner runs the explanation shards: threads on this machine, or a Ray cluster.

``threads`` (default) is Prefect's :class:`~prefect.task_runners.ThreadPoolTaskRunner`; its
size comes from ``PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS`` when set, else
:data:`DEFAULT_THREADS`. ``ray`` is
prefect-ray's ``RayTaskRunner`` on the cluster at ``address`` (a local one when None), an
optional dependency (``pip install 'lcer[ray]'``) imported only when asked for, and it needs
a Prefect server (``PREFECT_API_URL``) that the Ray workers report to. When the cluster has
GPUs, every explanation task (LCER's and the baselines') asks Ray for a CPU and
``LCER_RAY_GPUS_PER_SHARD`` of one GPU (:func:`gpus_per_shard`, default 1; a Ray task
without ``num_gpus`` sees no CUDA); else for a CPU. Deployments pick the runner from the environment of their work
pool: ``LCER_TASK_RUNNER=ray`` and ``LCER_RAY_ADDRESS=...``.

A whole GPU per shard keeps Ray's default for GPU tasks, ``max_calls=1``: each shard runs in
a fresh worker process, which gives its CUDA memory (the CUDA context and torch's cached
blocks, held by a process until it exits: ray-project/ray#29624) back to the GPU when it
ends. A fraction (``0.5``: two shards on one GPU at once) keeps the workers alive instead
(``max_calls=0``): a fresh process per shard would pay CUDA's start-up each time, and a
shard leaves no memory in torch's cache when it ends (:func:`lcer_core.devices.shard_device`),
so a long-lived worker holds only its CUDA context; the fraction must leave room for that
many contexts and shards on one GPU.

Ray workers share no filesystem with the flow: they get the flow's code through Ray's
``runtime_env`` (:func:`ray_runtime_env`: the packages, whatever a node has installed or in
its working folder), what a shard needs through Ray's object store, and send the shard back
the same way (see :mod:`flows.explain`), so nothing of ``LCER_HOME`` is forwarded to them.
Before submitting, the cluster is checked for the resources the tasks will ask for (a CPU
each; their fraction of a GPU more when the cluster
has GPUs): a cluster that lacks them is a one-line error, not a run that waits forever.
While the shards run, :func:`wait_on_ray` watches the cluster too: a shard that no live node
can take (its node died, and no other has a GPU) for ``LCER_RAY_NODE_GRACE_S`` seconds
(default :data:`DEFAULT_NODE_GRACE_S`) is given up, and the wait ends in one line naming the
dead node(s) and those shards (:class:`ShardsStranded`); a shard whose node died but that
another node fits is retried there by Ray (its ``max_retries``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from lcer_core.errors import InvalidParameterError, OrchestrationError
from lcer_core.settings import Settings, settings

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

__all__ = [
    "RUNNERS",
    "DEFAULT_THREADS",
    "check_runner",
    "make_task_runner",
    "ray_runtime_env",
    "default_task_runner",
    "explain_placement",
    "missing_resources",
    "is_ray_runner",
    "NODE_GRACE_ENV",
    "DEFAULT_NODE_GRACE_S",
    "GPUS_PER_SHARD_ENV",
    "gpus_per_shard",
    "TRAIN_ON_ENV",
    "train_on_gpu",
    "ShardsStranded",
    "node_grace_s",
    "placement_resources",
    "fits_some_node",
    "wait_on_ray",
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
        if _train_on() == "gpu":
            raise InvalidParameterError(
                f"{TRAIN_ON_ENV}=gpu needs --runner ray on a cluster with a GPU"
            )
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
    node_grace_s()  # a bad LCER_RAY_NODE_GRACE_S is one line now, not after the shards
    gpus_per_shard()  # and so is a bad LCER_RAY_GPUS_PER_SHARD
    _train_on()  # and LCER_TRAIN_ON
    # Ray folds log lines that differ only in numbers (a shard's retry, other shards) into one.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    init_kwargs: dict[str, Any] = {"runtime_env": ray_runtime_env()}
    init_kwargs["logging_level"] = "WARNING"  # not Ray's start-up chatter on the terminal
    if not address:
        init_kwargs["include_dashboard"] = False
    runner = RayTaskRunner(address=address or None, init_kwargs=init_kwargs)
    if methods is not None:
        _join_and_check(runner, list(methods))
    return runner


def ray_runtime_env() -> dict[str, Any]:
    """What every Ray worker of the flow gets: this process's code (the packages ``lcer_core``,
    ``flows`` and ``tasks``, uploaded once to the cluster and put first on the workers' path,
    whatever the nodes have installed) and the environment variables of :data:`_FORWARDED_ENV`."""
    from lcer_core.code_version import package_dirs

    env = {name: os.environ[name] for name in _FORWARDED_ENV if os.environ.get(name)}
    runtime_env: dict[str, Any] = {
        "py_modules": [str(p) for p in package_dirs()],
        "excludes": ["__pycache__", "*.pyc"],
    }
    return runtime_env | ({"env_vars": env} if env else {})


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
    env = settings()
    return make_task_runner(env.task_runner, env.ray_address if env.task_runner == "ray" else None)


def is_ray_runner() -> bool:
    """Whether the current flow run submits its tasks to Ray."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    return runner is not None and type(runner).__name__ == "RayTaskRunner"


def missing_resources(
    nodes: Sequence[Mapping[str, Any]], gpu_tasks: bool, gpus: float = 1.0
) -> str | None:
    """What the cluster of ``nodes`` (as ``ray.nodes()`` lists them) lacks for the explanation
    tasks, in words, or None: every task needs a CPU; with ``gpu_tasks``, one node must have
    ``gpus`` of a GPU and a CPU together."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", n.get("alive", False))]
    if not alive:
        return "the Ray cluster has no live node"
    cpus = sum(float(r.get("CPU", 0)) for r in alive)
    if cpus < 1:
        return f"the Ray cluster has no CPU ({len(alive)} node(s), 0 CPUs): every explanation task needs one"
    if gpu_tasks and not any(
        float(r.get("GPU", 0)) >= gpus and float(r.get("CPU", 0)) >= 1 for r in alive
    ):
        return (
            "the Ray cluster has GPUs but no node with both a GPU and a CPU free for the "
            f"{gpus:g} GPU and 1 CPU that each explanation task asks for"
        )
    return None


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def check_cluster(methods: Sequence[str]) -> bool:
    """On Ray: refuse a cluster that lacks what the tasks of ``methods`` ask for; whether the
    tasks ask for a GPU (they do when the cluster has one)."""
    import ray

    gpu_tasks = bool(methods) and _cluster_gpus() > 0
    problem = missing_resources(ray.nodes(), gpu_tasks, gpus_per_shard())
    if problem:
        raise InvalidParameterError(problem)
    return gpu_tasks


#: The fraction of one GPU that each explanation task asks Ray for when the cluster has GPUs.
GPUS_PER_SHARD_ENV = "LCER_RAY_GPUS_PER_SHARD"


def gpus_per_shard() -> float:
    """The GPU fraction of :data:`GPUS_PER_SHARD_ENV`: more than 0, at most 1 (default 1: a
    whole GPU and a fresh worker per shard; ``0.5``: two shards share one GPU)."""
    return settings().ray_gpus_per_shard


#: Where the recommender trains: ``auto`` (a GPU worker of the Ray cluster when it has one, else where
#: the flow runs), ``gpu`` (a GPU worker, or a one-line error) or ``here`` (where the flow runs).
TRAIN_ON_ENV = "LCER_TRAIN_ON"


def _train_on() -> str:
    return settings().train_on


def train_on_gpu() -> bool:
    """Whether this flow run trains the recommender on a GPU worker of its Ray cluster
    (:data:`TRAIN_ON_ENV`); ``gpu`` without a Ray cluster that has a GPU is a one-line error."""
    choice = _train_on()
    if choice == "here":
        return False
    gpu = is_ray_runner() and _cluster_gpus() >= 1
    if choice == "gpu" and not gpu:
        raise InvalidParameterError(
            f"{TRAIN_ON_ENV}=gpu needs --runner ray on a cluster with a GPU (this run has none)"
        )
    return gpu


def _gpu_options(gpus: float) -> dict[str, Any]:
    """Ray's options for a task with ``gpus`` of a GPU: a whole GPU keeps Ray's fresh worker
    per task (``max_calls=1``), a fraction long-lived workers (``max_calls=0``: no limit)."""
    return {"num_gpus": gpus, **({"max_calls": 0} if gpus < 1 else {})}


@contextlib.contextmanager
def explain_placement(gpu: bool) -> Iterator[str]:
    """Around the submission of one explanation task: its fraction of a GPU
    (:func:`gpus_per_shard`) when ``gpu`` (on Ray).

    Yields where the task goes (``threads``, ``ray`` or ``ray-gpu``), for the log.
    """
    if not is_ray_runner():
        yield "threads"
        return
    if not gpu:
        yield "ray"
        return
    from prefect_ray.context import remote_options

    with remote_options(**_gpu_options(gpus_per_shard())):
        yield "ray-gpu"


# ------------------------------------------------------------------ waiting on a changing cluster

#: How long a shard may wait with no live node able to take it before the run gives it up.
NODE_GRACE_ENV = "LCER_RAY_NODE_GRACE_S"
DEFAULT_NODE_GRACE_S: float = Settings.model_fields["ray_node_grace_s"].default

K = TypeVar("K", bound=Hashable)


class ShardsStranded(OrchestrationError):
    """Shards no live Ray node could take for the grace period; ``shards`` are their keys."""

    def __init__(self, message: str, shards: Sequence[Hashable]) -> None:
        super().__init__(message)
        self.shards = frozenset(shards)


def node_grace_s() -> float:
    """The grace period of :data:`NODE_GRACE_ENV` in seconds (a positive number)."""
    return settings().ray_node_grace_s


def placement_resources(where: str) -> dict[str, float]:
    """What Ray needs for a task placed as :func:`explain_placement` says (``ray``, ``ray-gpu``)."""
    return {"CPU": 1.0, "GPU": gpus_per_shard()} if where == "ray-gpu" else {"CPU": 1.0}


def _alive(node: Mapping[str, Any]) -> bool:
    return bool(node.get("Alive", node.get("alive", False)))


def fits_some_node(nodes: Sequence[Mapping[str, Any]], needs: Mapping[str, float]) -> bool:
    """Whether a live node of ``nodes`` (as ``ray.nodes()`` lists them) has all of ``needs``."""
    return any(
        all(float(n.get("Resources", {}).get(k, 0)) >= v for k, v in needs.items())
        for n in nodes
        if _alive(n)
    )


def _node_words(node: Mapping[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} (node id {node.get('NodeID', '?')})"


def _stranded_message(
    died: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    needs: Mapping[str, float],
    grace_s: float,
) -> str:
    what = ", ".join(f"{k} {v:g}" for k, v in sorted(needs.items()))
    if died:
        nodes = ", ".join(_node_words(n) for n in died)
        cause = f"Ray node{'s' if len(died) > 1 else ''} {nodes} died"
    else:
        cause = "the Ray cluster changed"
    return (
        f"{cause} and no live node has {what} for {len(names)} shard(s) after {grace_s:g} s: "
        f"{'; '.join(names)}; finished shards are kept: run the same command again to resume"
    )


def wait_on_ray(
    refs: Mapping[K, Any],
    needs: Mapping[K, Mapping[str, float]],
    names: Mapping[K, str],
    *,
    done: Callable[[K], None],
    grace_s: float | None = None,
    poll_s: float = 1.0,
) -> None:
    """Wait for the Ray object ``refs`` (by key), calling ``done(key)`` as each one is ready.

    A ref that no live node can take (``needs``) for ``grace_s`` seconds is cancelled and left;
    once nothing else is pending, :class:`ShardsStranded` names them (``names``) and the nodes
    that died meanwhile. A node's death alone changes nothing while another fits: Ray retries.
    """
    import ray

    grace_s = node_grace_s() if grace_s is None else grace_s
    known = {n["NodeID"]: n for n in ray.nodes() if _alive(n)}
    pending = dict(refs)
    unfit_since: dict[K, float] = {}
    stranded: list[K] = []
    while pending:
        ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=poll_s)
        ready_ids = set(ready)
        for key in [k for k, ref in pending.items() if ref in ready_ids]:
            del pending[key]
            unfit_since.pop(key, None)
            done(key)
        if not pending:
            break
        nodes = ray.nodes()
        now = time.monotonic()
        for key in list(pending):
            if fits_some_node(nodes, needs[key]):
                unfit_since.pop(key, None)
            elif now - unfit_since.setdefault(key, now) >= grace_s:
                with contextlib.suppress(Exception):  # already gone: nothing to cancel
                    ray.cancel(pending[key], force=True)
                del pending[key]
                stranded.append(key)
    if stranded:
        alive = {n["NodeID"] for n in ray.nodes() if _alive(n)}
        died = [n for node_id, n in known.items() if node_id not in alive]
        wanted = dict(needs[stranded[0]])
        for key in stranded[1:]:
            wanted.update({k: max(v, wanted.get(k, 0)) for k, v in needs[key].items()})
        raise ShardsStranded(
            _stranded_message(died, [names[k] for k in stranded], wanted, grace_s), stranded
        )
