"""MLflow tracking: the one module of the project that talks to MLflow.

Layout (see ``mlflow/README.md``): one experiment per dataset, named as the dataset; one
run per (method, k, α, λ) with params ``method, k, alpha, lam`` and metrics ``val_pct, len,
ps_pct, pn_pct, fns_pct``; a sweep is a parent run whose children carry the tag
``mlflow.parentRunId``; a trained recommender is logged with the PyTorch flavour and
registered as ``RECOMMENDER-DATASET`` (``multvae-ml-100k``, ``ease-ml-100k``; a new version per
training, alias :data:`MODEL_ALIAS`), from a run named ``train-RECOMMENDER``.

Every function here is plain and thread-safe: runs are created and closed through an
explicit :class:`~mlflow.tracking.MlflowClient`, never through the fluent "active run"
stack, so concurrent Prefect tasks cannot end each other's runs. A run left RUNNING by a
killed process is closed as FAILED by :func:`fail_stale_runs`.
"""

from __future__ import annotations

import atexit
import copy
import fcntl
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import psutil
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from lcer_core import paths
from lcer_core.explainers import loaded_plugins
from lcer_core.recommender import DEFAULT_RECOMMENDER

__all__ = [
    "METRICS",
    "MODEL_ALIAS",
    "TRAIN_RUN_NAME",
    "train_run_name",
    "configure",
    "artifacts_root",
    "client",
    "ensure_experiment",
    "registered_model_name",
    "registered_model_uri",
    "log_model",
    "load_model",
    "start_run",
    "end_run",
    "tracked_run",
    "fail_run",
    "start_explain_run",
    "finish_explain_run",
    "log_explain_run",
    "start_sweep",
    "sweep_run",
    "child_runs",
    "log_figures",
    "fail_stale_runs",
    "NETWORK_RUN_NAME",
    "NETWORK_KEY_TAG",
    "registered_network_name",
    "log_network",
]

log = logging.getLogger(__name__)

#: The evaluation metrics every explanation run carries (percentages as 0–100, ``len`` in items).
METRICS = ("val_pct", "len", "ps_pct", "pn_pct", "fns_pct")
#: The alias that always points at the newest registered model of a dataset and recommender.
MODEL_ALIAS = "current"
#: Run name of a training run of the default recommender (:func:`train_run_name`).
TRAIN_RUN_NAME = f"train-{DEFAULT_RECOMMENDER}"

# Tags that tie a run to the process that owns it (for fail_stale_runs).
_TAG_PID = "lcer.pid"
_TAG_HOST = "lcer.host"
_TAG_KIND = "lcer.kind"
#: The explainer plugins loaded when an explanation run was opened (JSON, as ``runs.plugins``).
TAG_PLUGINS = "lcer.plugins"
_PARENT_TAG = "mlflow.parentRunId"

_T = TypeVar("_T")
_open_runs: set[tuple[str, str]] = set()  # (tracking uri, run id) opened by this process
_open_lock = threading.Lock()


# --------------------------------------------------------------------------- store


def artifacts_root() -> Path:
    """Where artifacts of the local store live: ``LCER_HOME/mlflow/artifacts``."""
    return paths.mlflow_dir() / "artifacts"


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/"))


_created_stores: set[str] = set()


def _create_sqlite_store(uri: str, db: Path) -> None:
    """Create (or migrate) a SQLite store once, under a file lock: two processes creating
    the same new store at once fail in MLflow's migrations."""
    if uri in _created_stores:
        return
    try:
        fd = os.open(db.parent / ".mlflow-create.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return  # a read-only store: nothing to create, the first write fails in one line
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates the tables
    finally:
        os.close(fd)  # closing releases the flock
    _created_stores.add(uri)


def configure() -> str:
    """Point MLflow (tracking and registry) at the project's store, create its folders; returns the URI."""
    uri = paths.mlflow_tracking_uri()
    if uri.startswith("sqlite:"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        _create_sqlite_store(uri, db)
    if _is_local_store(uri):
        artifacts_root().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client() -> MlflowClient:
    """A client on the configured store (tracking and registry)."""
    uri = configure()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def finished_runs_tagged(dataset: str, tag: str, value: str, *, max_results: int = 20) -> list[Any]:
    """FINISHED runs of the dataset's experiment whose ``tag`` equals ``value``, newest first."""
    c = client()
    exp = c.get_experiment_by_name(dataset)
    if exp is None:
        return []
    return c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )


def _retry(fn: Callable[[], _T], *, attempts: int = 6) -> _T:
    """Call ``fn``, retrying while SQLite reports a lock (parallel writers on one file)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # SQLAlchemy's OperationalError arrives wrapped or bare
            if "database is locked" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


def ensure_experiment(dataset: str) -> str:
    """Id of the experiment named ``dataset``, created on first use; safe against a concurrent create.

    Call it once before fanning out: SQLite races when many writers create the same
    experiment (mlflow#4123).
    """
    c = client()
    exp = _retry(lambda: c.get_experiment_by_name(dataset))
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            _retry(lambda: c.restore_experiment(exp.experiment_id))
        return exp.experiment_id
    location = None
    if _is_local_store(mlflow.get_tracking_uri()):
        location = (artifacts_root() / dataset).as_uri()
    try:
        return _retry(lambda: c.create_experiment(dataset, artifact_location=location))
    except MlflowException:
        # Someone else created it between our lookup and our create.
        exp = _retry(lambda: c.get_experiment_by_name(dataset))
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------- runs


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _metric_value(name: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {name!r} is not a number: {value!r}") from exc


def start_run(
    dataset: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Open a RUNNING run in the dataset's experiment (nested under ``parent_run_id`` if given); returns its id.

    Close it with :func:`end_run`, or use :func:`tracked_run`, which does so whatever happens.
    """
    c = client()
    exp_id = ensure_experiment(dataset)
    all_tags = {
        _TAG_PID: str(os.getpid()),
        _TAG_HOST: socket.gethostname(),
        "lcer.dataset": dataset,
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    if parent_run_id:
        all_tags[_PARENT_TAG] = parent_run_id
    run = _retry(lambda: c.create_run(exp_id, run_name=run_name, tags=all_tags))
    run_id = run.info.run_id
    with _open_lock:
        _open_runs.add((mlflow.get_tracking_uri(), run_id))
    if params:
        _log_params(c, run_id, params)
    return run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Close a run as FINISHED, FAILED or KILLED."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"run status must be FINISHED, FAILED or KILLED, not {status!r}")
    c = client()
    _retry(lambda: c.set_terminated(run_id, status=status))
    with _open_lock:
        _open_runs.discard((mlflow.get_tracking_uri(), run_id))


@contextmanager
def tracked_run(
    dataset: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """A run that ends FINISHED when the body returns and FAILED when it raises (the error propagates)."""
    run_id = start_run(
        dataset, run_name=run_name, parent_run_id=parent_run_id, params=params, tags=tags
    )
    try:
        yield run_id
    except BaseException as exc:
        fail_run(run_id, exc)
        raise
    end_run(run_id, "FINISHED")


def fail_run(run_id: str, error: BaseException | str) -> None:
    """Close a run as FAILED with the error (type and message) in its ``lcer.error`` tag."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    try:
        c = client()
        _retry(lambda: c.set_tag(run_id, "lcer.error", message[:5000]))
    finally:
        end_run(run_id, "FAILED")


@contextmanager
def _continued_run(
    run_id: str, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[str]:
    """An already open run (see :func:`start_run`), closed like :func:`tracked_run`: FINISHED when
    the body returns, FAILED when it raises. Params it already holds are not logged again."""
    try:
        c = client()
        if params:
            held = _retry(lambda: c.get_run(run_id)).data.params
            _log_params(c, run_id, {k: v for k, v in params.items() if str(k) not in held})
        for key, value in (tags or {}).items():
            _retry(lambda k=key, v=value: c.set_tag(run_id, k, str(v)))
        yield run_id
    except BaseException as exc:
        fail_run(run_id, exc)
        raise
    end_run(run_id, "FINISHED")


def _log_params(c: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    batch = [Param(str(k), _param_value(v)) for k, v in params.items()]
    for i in range(0, len(batch), 100):
        _retry(lambda chunk=batch[i : i + 100]: c.log_batch(run_id, params=chunk))


def _log_metrics(c: MlflowClient, run_id: str, metrics: Mapping[str, Any]) -> None:
    """Log scalars, or per-step lists (one point per epoch, step = index); None values are skipped."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch: list[Metric] = []
    for name, value in metrics.items():
        if isinstance(value, (list, tuple, np.ndarray)):
            for step, v in enumerate(value):
                fv = _metric_value(name, v)
                if fv is not None:
                    batch.append(Metric(name, fv, now, step))
        else:
            fv = _metric_value(name, value)
            if fv is not None:
                batch.append(Metric(name, fv, now, 0))
    for i in range(0, len(batch), 1000):
        _retry(lambda chunk=batch[i : i + 1000]: c.log_batch(run_id, metrics=chunk))


def log_figures(run_id: str, paths_: Iterable[Path | str], artifact_path: str = "figures") -> None:
    """Attach PNG (or any) files to a run under ``figures/``."""
    c = client()
    for p in paths_:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"figure not found: {p}")
        _retry(lambda p=p: c.log_artifact(run_id, str(p), artifact_path=artifact_path))


def _fmt(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def start_explain_run(
    dataset: str,
    *,
    method: str,
    k: int,
    alpha: float | None,
    lam: float | None,
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Open the RUNNING run of one (method, k, α, λ) before its explanations exist; its id.

    Close it with :func:`finish_explain_run` (or :func:`fail_run`); should the process die
    first, :func:`fail_stale_runs` closes it as FAILED at the next start.
    """
    return start_run(
        dataset,
        run_name=run_name or f"{method}-k{k}-a{_fmt(alpha)}-l{_fmt(lam)}",
        parent_run_id=parent_run_id,
        params={"method": method, "k": k, "alpha": alpha, "lam": lam, **(params or {})},
        tags={
            _TAG_KIND: "explain",
            TAG_PLUGINS: json.dumps(loaded_plugins(), sort_keys=True, separators=(",", ":")),
            **(tags or {}),
        },
    )


def finish_explain_run(
    run_id: str,
    *,
    metrics: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    explanations_parquet: Path | None = None,
    figures: Iterable[Path] = (),
) -> str:
    """Log metrics (and params known only now), the explanations Parquet and figures into an open
    explanation run, then close it FINISHED (FAILED if logging fails); returns its id."""
    with _continued_run(run_id, params=params):
        c = client()
        _log_metrics(c, run_id, metrics)
        if explanations_parquet is not None:
            p = Path(explanations_parquet)
            if not p.is_file():
                raise FileNotFoundError(f"explanations file not found: {p}")
            _retry(lambda: c.log_artifact(run_id, str(p), artifact_path="explanations"))
        log_figures(run_id, figures)
    return run_id


def log_explain_run(
    dataset: str,
    *,
    method: str,
    k: int,
    alpha: float | None,
    lam: float | None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any],
    explanations_parquet: Path | None = None,
    figures: Iterable[Path] = (),
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Record one (method, k, α, λ) evaluation as a FINISHED run; returns its id.

    ``alpha``/``lam`` are None for methods without them (logged as the string ``None``); a
    metric given as None (``val_pct`` of FIA) is left out rather than logged as a number.
    """
    run_id = start_explain_run(
        dataset,
        method=method,
        k=k,
        alpha=alpha,
        lam=lam,
        params=params,
        parent_run_id=parent_run_id,
        run_name=run_name,
        tags=tags,
    )
    return finish_explain_run(
        run_id, metrics=metrics, explanations_parquet=explanations_parquet, figures=figures
    )


def start_sweep(
    dataset: str,
    grid: Mapping[str, Any],
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Open the parent run of an α/λ sweep (RUNNING); children pass its id as ``parent_run_id``.

    ``grid`` is logged as params (lists as JSON), e.g. ``{"method": "lcer", "k": 5,
    "alphas": [...], "lams": [...]}``. Close it with :func:`end_run` or use :func:`sweep_run`.
    """
    sizes = [len(v) for v in grid.values() if isinstance(v, (list, tuple))]
    params = {**grid, "n_points": math.prod(sizes) if sizes else 1}
    method, k = grid.get("method"), grid.get("k")
    name = run_name or "sweep" + (f"-{method}" if method else "") + (f"-k{k}" if k else "")
    return start_run(
        dataset, run_name=name, params=params, tags={_TAG_KIND: "sweep", **(tags or {})}
    )


@contextmanager
def sweep_run(
    dataset: str, grid: Mapping[str, Any], *, run_name: str | None = None
) -> Iterator[str]:
    """:func:`start_sweep` as a context manager: FINISHED on return, FAILED if the body raises."""
    run_id = start_sweep(dataset, grid, run_name=run_name)
    try:
        yield run_id
    except BaseException:
        end_run(run_id, "FAILED")
        raise
    end_run(run_id, "FINISHED")


def child_runs(parent_run_id: str) -> list[Run]:
    """The child runs of a sweep, oldest first."""
    c = client()
    parent = c.get_run(parent_run_id)
    return _retry(
        lambda: c.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{_PARENT_TAG}` = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=10_000,
        )
    )


def fail_stale_runs(dataset: str, *, max_age_s: float | None = None) -> list[str]:
    """Close as FAILED the RUNNING runs of ``dataset`` whose owner process is gone; returns their ids.

    A run records the pid and host that opened it. On this host a run is stale when that
    pid no longer exists or now belongs to a process started after the run (pid reuse).
    Runs opened on another host are left alone unless older than ``max_age_s``. Runs
    opened by the current process are never touched.
    """
    c = client()
    exp = c.get_experiment_by_name(dataset)
    if exp is None:
        return []
    running = _retry(
        lambda: c.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'RUNNING'",
            max_results=10_000,
        )
    )
    host, now, failed = socket.gethostname(), time.time(), []
    for run in running:
        started = run.info.start_time / 1000.0
        pid = run.data.tags.get(_TAG_PID)
        if run.data.tags.get(_TAG_HOST) == host and pid is not None and pid.isdigit():
            stale = not _process_alive_since(int(pid), started)
        else:
            stale = max_age_s is not None and now - started > max_age_s
        if stale:
            _retry(lambda r=run: c.set_tag(r.info.run_id, "lcer.error", "owner process gone"))
            _retry(lambda r=run: c.set_terminated(r.info.run_id, status="FAILED"))
            failed.append(run.info.run_id)
    return failed


def _process_alive_since(pid: int, started: float) -> bool:
    """Whether process ``pid`` exists and was already running at time ``started``."""
    if pid == os.getpid():
        return True
    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    return created <= started + 1.0


@atexit.register
def _fail_open_runs() -> None:
    """At interpreter exit, runs this process opened and never closed end FAILED."""
    with _open_lock:
        pending = list(_open_runs)
        _open_runs.clear()
    for uri, run_id in pending:
        try:
            MlflowClient(tracking_uri=uri).set_terminated(run_id, status="FAILED")
        except Exception:  # exiting: nothing useful left to do with the error
            log.debug("could not close run %s", run_id, exc_info=True)


# --------------------------------------------------------------------------- models


def train_run_name(recommender: str = DEFAULT_RECOMMENDER) -> str:
    """``train-RECOMMENDER``: the name of a training run (``train-multvae``)."""
    return f"train-{recommender}"


def registered_model_name(dataset: str, recommender: str = DEFAULT_RECOMMENDER) -> str:
    """``RECOMMENDER-DATASET``: the registry name of the dataset's model (``multvae-ml-100k``)."""
    return f"{recommender}-{dataset}"


def registered_model_uri(
    dataset: str, version: int | None = None, recommender: str = DEFAULT_RECOMMENDER
) -> str:
    """``models:/RECOMMENDER-DATASET/VERSION``, or the :data:`MODEL_ALIAS` alias when no version is given."""
    name = registered_model_name(dataset, recommender)
    return f"models:/{name}/{version}" if version is not None else f"models:/{name}@{MODEL_ALIAS}"


def _pip_requirements() -> list[str]:
    # Given explicitly: inferring them loads the model in a subprocess (slow, and offline here).
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]


def log_model(
    model: torch.nn.Module,
    dataset: str,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    input_example: np.ndarray,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    recommender: str = DEFAULT_RECOMMENDER,
) -> dict[str, Any]:
    """Log a trained ``recommender`` (PyTorch flavour, signature, input example) and register a
    new version of ``RECOMMENDER-DATASET``; the run is named ``train-RECOMMENDER`` unless told.

    With ``run_id``, the model goes into that open run (the training run, opened with
    :func:`start_run` before training), which is then closed, instead of a new run.

    ``metrics`` values may be scalars or per-epoch lists (logged with step = epoch). The
    model is exported from a CPU copy in eval mode with ``torch.export`` (MLflow's safe
    ``pt2`` format, loadable without unpickling); a one-row example is repeated to two rows
    so that the exported batch dimension stays dynamic.
    Returns ``{"run_id", "model_uri", "version"}``; the alias :data:`MODEL_ALIAS` moves to
    the new version.
    """
    example = np.asarray(input_example, dtype=np.float32)
    if example.ndim != 2:
        raise ValueError(f"input_example must be [B, M], got shape {example.shape}")
    if example.shape[0] == 1:
        example = np.repeat(example, 2, axis=0)
    # A CPU copy in eval mode: the logged model loads anywhere, the caller's module is untouched.
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        out = cpu_model(torch.from_numpy(example))
    if isinstance(out, (tuple, list)):
        out = out[0]
    signature = infer_signature(example, out.detach().numpy())
    name = registered_model_name(dataset, recommender)
    all_params = {"dataset": dataset, **params}
    all_tags = {_TAG_KIND: "train", **(tags or {})}
    run_name = run_name or train_run_name(recommender)
    opened = (
        tracked_run(dataset, run_name=run_name, params=all_params, tags=all_tags)
        if run_id is None
        else _continued_run(run_id, params=all_params, tags=all_tags)
    )
    with opened as run_id:
        c = client()
        _log_metrics(c, run_id, metrics)
        nested = mlflow.active_run() is not None
        with mlflow.start_run(run_id=run_id, nested=nested):
            info = mlflow.pytorch.log_model(
                cpu_model,
                name=recommender,
                signature=signature,
                input_example=example,
                registered_model_name=name,
                pip_requirements=_pip_requirements(),
            )
        version = int(info.registered_model_version)
        _retry(lambda: c.set_registered_model_alias(name, MODEL_ALIAS, str(version)))
        _retry(lambda: c.set_model_version_tag(name, str(version), "dataset", dataset))
        _retry(lambda: c.set_model_version_tag(name, str(version), "run_id", run_id))
    return {"run_id": run_id, "model_uri": info.model_uri, "version": version}


def load_model(
    dataset: str, version: int | None = None, recommender: str = DEFAULT_RECOMMENDER
) -> torch.nn.Module:
    """The registered ``recommender`` of ``dataset`` (the :data:`MODEL_ALIAS` version unless one is given).

    MLflow's PyTorch flavour unpickles the model: load only from a store you trust (no lcer
    command calls this; they load checkpoints with ``weights_only``)."""
    configure()
    return mlflow.pytorch.load_model(registered_model_uri(dataset, version, recommender))


# --------------------------------------------------------------------------- explainer networks

#: Run name of an amortised-explainer network's training run (one per network key).
NETWORK_RUN_NAME = "train-amortised"
#: The tag that holds a network's key on its run and its registered version.
NETWORK_KEY_TAG = "lcer.network_key"


def registered_network_name(dataset: str) -> str:
    """``amortised-DATASET``: the registry name of the dataset's amortised-explainer networks."""
    return f"amortised-{dataset}"


def log_network(
    dataset: str,
    key: str,
    folder: Path,
    *,
    params: Mapping[str, Any],
    curve: Iterable[float],
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """Record a trained explainer network: a FINISHED run ``train-amortised-kK`` in the dataset's
    experiment (``params``, the mean training loss per epoch as ``train_loss`` with step =
    epoch, ``metrics``, the files of ``folder`` as artifacts under ``network/``), registered as
    a version of ``amortised-DATASET`` tagged with its key. Returns ``{"run_id", "version"}``."""
    name = registered_network_name(dataset)
    tags = {_TAG_KIND: "train-explainer", NETWORK_KEY_TAG: key}
    run_name = f"{NETWORK_RUN_NAME}-k{params.get('k', '')}"
    with tracked_run(dataset, run_name=run_name, params=params, tags=tags) as run_id:
        c = client()
        _log_metrics(c, run_id, {"train_loss": list(curve), **metrics})
        _retry(lambda: c.log_artifacts(run_id, str(folder), artifact_path="network"))
        try:
            _retry(lambda: c.create_registered_model(name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{_retry(lambda: c.get_run(run_id)).info.artifact_uri}/network"
        mv = _retry(lambda: c.create_model_version(name, source, run_id=run_id, tags={"key": key}))
    return {"run_id": run_id, "version": int(mv.version)}
