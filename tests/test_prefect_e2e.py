"""End to end on a real Prefect server: work pools, ``prefect deploy --all``, process workers,
``lcer-pipeline`` on ML 100K, the fan-out seen through the API, and a kill -9 during explanation.

The deployments are made from a git checkout of the code under test that is then removed (as a
laptop that deploys and goes away): every flow run clones the deployed commit from the
repository the deployment names, and both workers run in empty folders. On the gpu pool's
route (``lcer run --explain-deployment``) the gpu worker is killed mid-run and the same command
run again explains only the shards not yet under the storage URL (a bucket on the session's S3
API server, moto, where it is installed: the two pools share nothing else); a pipeline of other code
than the deployment's is refused in one line, before any work.

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
import re
import secrets
import shutil
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

from lcer_core.code_version import code_version
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


def _check(cmd: list[str], env: dict[str, str], timeout: float = 120, cwd: Path = REPO) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else ""


def _snapshot(root: Path) -> tuple[Path, Path, str]:
    """The code under test as a git checkout of its own and the bare repository it is pushed
    to (what workers clone); the checkout, the repository and the commit."""
    src, bare = root / "src", root / "repo.git"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("lcer_core", "flows", "tasks"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("prefect.yaml", "pyproject.toml"):
        shutil.copy2(REPO / name, src / name)
    git = ["git", "-c", "user.name=lcer-test", "-c", "user.email=lcer-test@localhost"]
    for args in (["init", "-q", "."], ["add", "-A"], ["commit", "-qm", "the code under test"]):
        subprocess.run([*git, *args], cwd=src, check=True, capture_output=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(src), str(bare)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=src, check=True, capture_output=True, text=True
    ).stdout.strip()
    return src, bare, commit


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.parquet")}


def _versions(storage: SharedStorage, under: str) -> dict[str, tuple[str, ...]]:
    """The shard objects under ``URL/under``, each with what changes when it is written again
    (ETag and LastModified, in ms, of the S3 object; size and mtime in ns of a file)."""
    return {
        name: version
        for name, version in storage.versions(under).items()
        if name.startswith("shard-") and name.endswith(".parquet")
    }


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


def _flow_runs(client: Any, flow: str) -> dict[UUID, Any]:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
    return {r.id: r for r in runs}


def _pipeline_flow_runs(client: Any) -> dict[UUID, Any]:
    return _flow_runs(client, "lcer-pipeline")


def _shards(home: Path, run_id: str) -> dict[str, int]:
    return _mtimes(home / "work" / run_id)


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
            "code_version": code_version(),
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
    # The gpu pool's worker has its own LCER_HOME: what its flow needs and returns goes through
    # the storage URL, the only place the two pools share: a bucket on the session's S3 API
    # server (moto; a folder where it is not installed). Both workers run in empty folders,
    # with no checkout of ours on their path: each flow run clones the deployed commit.
    storage = shared_storage(request, root / "storage", "lcer-e2e")
    gpu_home = root / "gpu-home"
    cwds = {pool: root / f"{pool}-cwd" for pool in ("cpu", "gpu")}
    for cwd in cwds.values():
        cwd.mkdir()
    worker_env = {
        **env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "LCER_STORAGE": storage.url,
        **storage.env,
        # The harness's fault (tests/faults/sitecustomize.py): a shard on the gpu pool waits
        # 1 s after saying where it runs, one at a time, so that a kill lands mid-run.
        "PYTHONPATH": str(REPO / "tests" / "faults"),
    }
    gpu_env = {
        **worker_env,
        "LCER_HOME": str(gpu_home),
        "LCER_FAULT_SLOW_SHARD": "1",
        "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": "1",
    }
    pools = {"cpu": worker_env, "gpu": gpu_env}
    logs = [root / "worker-cpu.log", root / "worker-gpu.log"]
    workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(pool: str) -> None:
        workers[pool] = _start(
            [PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
            pools[pool],
            root / f"worker-{pool}.log",
            cwd=cwds[pool],
        )

    try:
        for pool in ("cpu", "gpu"):
            _check([PREFECT, "work-pool", "create", pool, "--type", "process"], env)
        # As Prefect users deploy: from a clean checkout, its commit pushed to the repository
        # the workers clone (LCER_GIT_URL); then the checkout goes away.
        src, bare, commit = _snapshot(root)
        _check([PREFECT, "--no-prompt", "deploy", "--all"],
               {**env, "LCER_GIT_URL": bare.as_uri()}, timeout=180, cwd=src)  # fmt: skip
        shutil.rmtree(src)
        for pool in pools:
            start_worker(pool)
        explain = api_client.read_deployment_by_name("lcer-explain/lcer-explain")
        assert explain.version == code_version()
        [pull] = explain.pull_steps
        clone = pull["prefect.deployments.steps.git_clone"]
        assert clone == {"repository": bare.as_uri(), "commit_sha": commit}

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
        assert [list(cwd.iterdir()) for cwd in cwds.values()] == [[], []]
        _gpu_worker_killed_then_resumed(api_client, server, storage, workers, start_worker)
        _other_code_is_refused(server, root)
    finally:
        for worker in workers.values():
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


def _gpu_worker_killed_then_resumed(
    client: Any,
    server: dict[str, Any],
    storage: SharedStorage,
    workers: dict[str, subprocess.Popen[bytes]],
    start_worker: Any,
) -> None:
    """``lcer run --explain-deployment``: the gpu pool's worker (and its flow run) is killed
    after some shards are under the storage URL; the same command again explains only the
    others, on a new worker, and stores every row once."""
    from lcer_core.runs import run_spec

    env, root = server["env"], server["root"]
    argv = [sys.executable, "-c", CLI, "run", "ml-100k", "--methods", "lcer", "--k", "5",
            "--users", "4", "--steps", "200", "--shard-size", "1", "--epochs", "3",
            "--explain-deployment", "lcer-explain/lcer-explain"]  # fmt: skip
    run_env = {**env, "LCER_STORAGE": storage.url, **storage.env}
    model_key = ResultStore().query("SELECT model_key FROM models")["model_key"][0]
    run_id = run_spec(dataset="ml-100k", method="lcer", k=5, alpha=0.1, lam=0.01, steps=200,
                      seed=0, n_users=4, model_key=model_key).run_id  # fmt: skip
    left = f"work/{run_id}"
    gpu_log = root / "worker-gpu.log"
    offset = gpu_log.stat().st_size
    started = re.compile(r"shard \d+ of ml-100k/lcer k=5 started on node \S+ pid (\d+)")
    log = root / "gpu-killed.log"
    proc = _start(argv, run_env, log)
    try:
        deadline = time.monotonic() + 240
        while not _versions(storage, left):
            assert proc.poll() is None, f"lcer run ended before the kill:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no shard left in time:\n{_tail(gpu_log)}"
            time.sleep(0.2)
        # the machine of the gpu pool dies: its worker and the flow run it started
        hit = started.search(gpu_log.read_bytes()[offset:].decode(errors="replace"))
        assert hit, _tail(gpu_log)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(hit.group(1)), signal.SIGKILL)
        _stop(workers["gpu"], signal.SIGKILL)
    finally:
        _stop(proc, signal.SIGKILL)  # the pipeline would wait for that flow run forever
    before = _versions(storage, left)
    assert 1 <= len(before) < 4, before
    start_worker("gpu")
    explain_runs_before = set(_flow_runs(client, "lcer-explain"))
    again = subprocess.run(argv, env=run_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:] + _tail(gpu_log)
    after = _versions(storage, left)
    assert len(after) == 4
    # The shards left before the kill are untouched (same ETag and LastModified); only the
    # others were written, by the one task run each of the new lcer-explain flow run.
    assert {name: after[name] for name in before} == before
    recomputed = sorted(set(after) - set(before))
    assert len(recomputed) == 4 - len(before)
    [explain_run] = set(_flow_runs(client, "lcer-explain")) - explain_runs_before
    tasks = _settled_explain_runs(client, [explain_run], len(recomputed))
    assert sorted(f"shard-{r.name[-4:]}.parquet" for r in tasks) == recomputed
    store = ResultStore()
    run = store.run(run_id)
    assert run is not None and run["status"] == "finished"
    assert store.explanations(run_id).height == 20  # 4 users x top-5, once each


def _other_code_is_refused(server: dict[str, Any], root: Path) -> None:
    """``lcer run --explain-deployment`` from other code than the deployment's: one line,
    exit 2, before anything is prepared."""
    other = root / "other"
    for name in ("lcer_core", "flows", "tasks"):
        shutil.copytree(REPO / name, other / name, ignore=shutil.ignore_patterns("__pycache__"))
    with (other / "lcer_core" / "__init__.py").open("a") as fh:
        fh.write("# another commit\n")
    home = root / "other-home"
    env = {**server["env"], "LCER_HOME": str(home), "PYTHONPATH": str(other)}
    argv = [sys.executable, "-c", CLI, "run", "ml-100k", "--methods", "fia", "--k", "5",
            "--users", "2", "--explain-deployment", "lcer-explain/lcer-explain"]  # fmt: skip
    done = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    [line] = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith("error: deployment lcer-explain/lcer-explain runs lcer "), line
    assert f"this pipeline is lcer {code_version()}" not in line and "+src." in line, line
    assert "Traceback" not in done.stderr
    assert not (home / "data").exists() and not (home / "models").exists()
