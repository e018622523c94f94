"""End to end on a real Prefect server: work pools, ``prefect deploy --all``, process workers,
``lcer-pipeline`` on ML 100K, the fan-out seen through the API, and a kill -9 during explanation.

The server is protected as docs/cluster.md's set-up says: Prefect's API auth string
(``PREFECT_SERVER_API_AUTH_STRING`` on the server, ``PREFECT_API_AUTH_STRING`` on every client:
workers, ``prefect deploy``, ``lcer run``, this test); a request without it is refused.

Everything started here (server, workers, the killed pipeline) runs in its own process group
and is stopped in ``finally`` blocks, whatever happens.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import polars as pl
import pytest
from s3_fixtures import SharedStorage, shared_storage

from lcer_core.store import ResultStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
CLI = "import sys, lcer_core.cli.pipeline; from lcer_core.cli import main; main(sys.argv[1:])"
PIPELINE = {  # the deployment's parameters: the plan (JSON), then where to explain
    "plan": {
        "datasets": ["ml-100k"],
        "explainers": {"lcer": {"fixed": {"steps": 100}}, "fia": {}},
        "ks": [5],
        "n_users": 4,
        "seed": 0,
        "shard_size": 2,
        "epochs": 3,
    }
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    """A child in its own process group (so that stopping it stops its children too)."""
    out = log.open("ab")
    try:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        out.close()


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """Signal the child's process group; SIGKILL what is left after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # the group may hold children still
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _check(cmd: list[str], env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, http_mirror: str) -> Iterator[dict[str, Any]]:
    """A real ``prefect server start`` on loopback with its own PREFECT_HOME; the env to talk to it."""
    root = tmp_path_factory.mktemp("e2e")
    home = root / "lcer-home"
    home.mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    auth = secrets.token_urlsafe(24)
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LCER_", "MLFLOW_"))
    }
    env = {
        **base,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "LCER_HOME": str(home),
        "LCER_MIRROR": http_mirror,
    }
    log = root / "server.log"
    proc = _start(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        {**env, "PREFECT_SERVER_API_AUTH_STRING": auth},
        log,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"prefect server exited:\n{_tail(log)}"
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (
                f"prefect server not healthy after 90 s:\n{_tail(log)}"
            )
            time.sleep(0.5)
        # Without the auth string (or with another) the API answers 401; health stays open.
        for headers in ({}, {"Authorization": "Basic bm90LWl0"}):
            denied = httpx.post(f"{api}/deployments/filter", json={}, headers=headers, timeout=10)
            assert denied.status_code == 401, denied.text
        client_env = {**env, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": auth}
        yield {"api": api, "auth": auth, "env": client_env, "root": root, "home": home}
    finally:
        _stop(proc)


@pytest.fixture()
def api_client(server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """This test process pointed at the server (and at the same LCER_HOME) for the test's duration."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("LCER_HOME", str(server["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = {PREFECT_API_URL: server["api"], PREFECT_API_AUTH_STRING: server["auth"]}
    with (
        temporary_settings(updates=settings),
        get_client(sync_client=True) as client,
    ):
        yield client


def _wait_flow_run(client: Any, flow_run_id: UUID, timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            pytest.fail(
                f"flow run {run.name} still {run.state.name} after {timeout} s\n"
                + "\n".join(_tail(p) for p in logs)
            )
        time.sleep(1)


def _explain_task_runs(client: Any, flow_run_ids: list[UUID]) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
    )
    return [r for r in runs if r.name.startswith("explain-")]


def _settled_explain_runs(client: Any, flow_run_ids: list[UUID], expected: int) -> list[Any]:
    """Task-run states reach the server through events: wait (bounded) until ``expected`` are final."""
    deadline = time.monotonic() + 30
    while True:
        runs = _explain_task_runs(client, flow_run_ids)
        if len(runs) >= expected and all(r.state and r.state.is_final() for r in runs):
            return runs
        if time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def _pipeline_flow_runs(client: Any) -> dict[UUID, Any]:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["lcer-pipeline"]))
    )
    return {r.id: r for r in runs}


def _shards(home: Path, run_id: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (home / "work" / run_id).glob("shard-*.parquet")}


def _forged_explain_run_is_refused(
    client: Any, storage: SharedStorage, root: Path, logs: list[Path]
) -> None:
    """A flow run of lcer-explain created with a storage URL of the caller's (the pipeline's
    own run and bundle otherwise) fails in one line on the gpu worker, writing nothing there."""
    from prefect.deployments import run_deployment

    from lcer_core.runs import run_spec

    model_key = ResultStore().query("SELECT model_key FROM models")["model_key"][0]
    spec = run_spec(dataset="ml-100k", method="fia", k=5, seed=0, n_users=4, model_key=model_key)
    [bundle] = {key.split("/")[0] for key in storage.objects("bundles")}
    users = pl.read_parquet(io.BytesIO(storage.read(f"bundles/{bundle}/users.parquet")))
    elsewhere = root / "elsewhere"
    forged = run_deployment(
        "lcer-explain/lcer-explain",
        parameters={
            "specs": [{**spec.to_payload(), "model_digest": "0" * 64, "data_digest": "0" * 64}],
            "users": users["uid"].to_list(),
            "shard_size": 2,
            "storage": elsewhere.as_uri(),
            "bundles": {model_key: f"{storage.url}/bundles/{bundle}"},
        },
        timeout=0,
    )
    ended = _wait_flow_run(client, forged.id, 120, logs)
    message = ended.state.message or ""
    assert not elsewhere.exists(), sorted(elsewhere.rglob("*"))
    assert ended.state.is_failed(), f"{ended.state}\n" + "\n".join(_tail(p) for p in logs)
    assert "is not this worker's storage URL" in message and "\n" not in message, message


def test_deployments_workers_fan_out_and_kill_resume(
    server: dict[str, Any], api_client: Any, request: pytest.FixtureRequest
) -> None:
    from prefect.deployments import run_deployment

    env, root, home = server["env"], server["root"], server["home"]
    # The gpu pool's worker has its own working folder and LCER_HOME: what its flow needs and
    # returns goes through the storage URL, the only place the two pools share: a bucket on the
    # session's S3 API server (moto; a folder where it is not installed).
    storage = shared_storage(request, root / "storage", "lcer-e2e")
    gpu_home, gpu_cwd = root / "gpu-home", root / "gpu-cwd"
    gpu_cwd.mkdir()
    worker_env = {
        **env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "LCER_STORAGE": storage.url,
        **storage.env,
    }
    pools = {
        "cpu": (worker_env, REPO),
        "gpu": ({**worker_env, "LCER_HOME": str(gpu_home)}, gpu_cwd),
    }
    logs = [root / "worker-cpu.log", root / "worker-gpu.log"]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for pool in ("cpu", "gpu"):
            _check([PREFECT, "work-pool", "create", pool, "--type", "process"], env)
        # As Prefect users deploy: from the checkout, nothing set beforehand.
        _check([PREFECT, "--no-prompt", "deploy", "--all"], env, timeout=180)
        for (pool, (pool_env, cwd)), log in zip(pools.items(), logs, strict=True):
            workers.append(
                _start(
                    [PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
                    pool_env,
                    log,
                    cwd=cwd,
                )
            )

        # The schedule of lcer-reevaluate is stored with the deployment.
        reevaluate = api_client.read_deployment_by_name("lcer-reevaluate/lcer-reevaluate")
        [schedule] = reevaluate.schedules
        assert schedule.schedule.cron == "0 3 * * 1" and schedule.schedule.timezone == "UTC"

        # lcer-pipeline through the cpu worker, its explanations through lcer-explain on the gpu pool.
        flow_run = run_deployment(
            "lcer-pipeline/lcer-pipeline",
            parameters={**PIPELINE, "explain_deployment": "lcer-explain/lcer-explain"},
            timeout=0,
        )
        finished = _wait_flow_run(api_client, flow_run.id, 240, logs)
        assert finished.state.is_completed(), f"{finished.state}\n" + "\n".join(
            _tail(p) for p in logs
        )

        table2 = ResultStore().table2("ml-100k")
        assert sorted(table2["method"].to_list()) == ["fia", "lcer"]
        assert table2["n_pairs"].to_list() == [20, 20]

        # The fan-out: one explanation task run per shard (2) and method (2), in the child
        # flow run that the gpu worker ran.
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        children = api_client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])
            )
        )
        explain_runs = [c for c in children if c.deployment_id is not None]
        assert len(explain_runs) == 1 and explain_runs[0].state.is_completed()
        task_runs = _settled_explain_runs(api_client, [explain_runs[0].id], 4)
        names = sorted(r.name for r in task_runs)
        assert len(names) == 4, names
        assert [n.split("-")[1] for n in names] == ["fia", "fia", "lcer", "lcer"]
        assert {n[-4:] for n in names} == {"0000", "0001"}
        assert {r.state.name for r in task_runs} == {"Completed"}

        # The gpu pool read nothing of the flow's LCER_HOME: its own has no data, no model,
        # no shard; the shards went through the storage URL.
        assert not (gpu_home / "data").exists() and not (gpu_home / "models").exists()
        assert not list(gpu_home.rglob("shard-*.parquet"))
        assert len([k for k in storage.objects("work") if k.endswith(".parquet")]) == 4
        assert storage.objects("bundles") != []
        assert not [k for k in storage.objects() if ".lcer-probe-" in k or ".tmp-" in k]

        _forged_explain_run_is_refused(api_client, storage, root, logs)
    finally:
        for worker in workers:
            _stop(worker)

    # kill -9 during explanation, then the same command again: finished shards are not redone.
    # `lcer run` reports to the same server (PREFECT_API_URL) and runs one shard at a time.
    run_env = {**env, "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": "1"}
    argv = [sys.executable, "-c", CLI, "run", "ml-100k", "--methods", "lcer", "--k", "10",
            "--users", "4", "--steps", "400", "--shard-size", "1", "--epochs", "3"]  # fmt: skip
    model_key = ResultStore().query("SELECT model_key FROM models")["model_key"][0]
    from lcer_core.runs import run_spec

    run_id = run_spec(dataset="ml-100k", method="lcer", k=10, alpha=0.1, lam=0.01, steps=400,
                      seed=0, n_users=4, model_key=model_key).run_id  # fmt: skip
    before = set(_pipeline_flow_runs(api_client))
    log = root / "killed.log"
    proc = _start(argv, run_env, log)
    try:
        deadline = time.monotonic() + 150
        while len(_shards(home, run_id)) < 2:
            assert proc.poll() is None, f"lcer run ended before it was killed:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no shard finished in time:\n{_tail(log)}"
            time.sleep(0.2)
    finally:
        _stop(proc, signal.SIGKILL)
    finished_before_kill = _shards(home, run_id)
    assert 2 <= len(finished_before_kill) < 4, finished_before_kill
    [killed_run] = set(_pipeline_flow_runs(api_client)) - before
    done_in_killed = {
        r.name[-4:]
        for r in _explain_task_runs(api_client, [killed_run])
        if r.state and r.state.is_completed()
    }

    again = subprocess.run(argv, env=run_env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-4000:]
    [rerun] = set(_pipeline_flow_runs(api_client)) - before - {killed_run}
    after = _shards(home, run_id)
    assert len(after) == 4
    # The shards that had finished are untouched (same file, same mtime); only the others ran.
    assert {name: after[name] for name in finished_before_kill} == finished_before_kill
    recomputed = [name for name in after if name not in finished_before_kill]
    assert len(recomputed) == 4 - len(finished_before_kill)
    states = {r.name[-4:]: r.state.name for r in _settled_explain_runs(api_client, [rerun], 4)}
    assert len(states) == 4
    assert all(states[i] == "Cached" for i in done_in_killed), states
    assert set(states.values()) <= {"Cached", "Completed"}
    # (A shard killed between writing its file and recording its result is Completed without
    # being recomputed: the task finds the whole file and returns it.)
    assert sum(s == "Completed" for s in states.values()) >= len(recomputed)

    store = ResultStore()
    run = store.run(run_id)
    assert run is not None and run["status"] == "finished"
    assert store.explanations(run_id).height == 40  # 4 users x top-10, once each
