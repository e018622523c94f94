"""kill -9 of ``lcer run`` (embedded Prefect, thread runner) during training, during explanation and
during the DuckDB write; then the same command again.

Each time the whole process group (the CLI and its temporary Prefect server) gets SIGKILL at a
moment recognised from outside (a log line, a shard file), and the re-run must complete, reuse
what had finished, leave exactly one copy of every row in DuckDB, and show the killed MLflow
runs as FAILED. One LCER_HOME for the module, datasets from a loopback HTTP mirror; the tests
run in order and build on each other's state (each sets up what it needs if an earlier one
did not).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

from lcer_core.store import ResultStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FAULTS = str(REPO / "tests" / "faults")  # the harness's fault injection (sitecustomize)
CLI = "import sys, lcer_core.cli.pipeline; from lcer_core.cli import main; main(sys.argv[1:])"
EPOCHS = 6
COMMON = ["run", "ml-100k", "--k", "5", "--epochs", str(EPOCHS)]
# fia on 2 users: quick, so that the run killed in training is mostly training.
TRAIN_ARGV = [*COMMON, "--methods", "fia", "--users", "2", "--shard-size", "2"]
# LCER on 4 users, one user per shard, shards one at a time: several seconds per shard.
EXPLAIN_ARGV = [*COMMON, "--methods", "lcer", "--users", "4", "--shard-size", "1", "--steps", "300"]
# The fia run of TRAIN_ARGV again (stored: its rows are replaced) and a new, quick LCER run.
WRITE_ARGV = [
    *COMMON,
    "--methods",
    "fia,lcer",
    "--users",
    "2",
    "--shard-size",
    "2",
    "--steps",
    "40",
]
WAIT_S = 240  # bound of every wait for a run or a marker (a loaded 2-core machine is slow)


# --------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, http_mirror: str) -> Iterator[dict[str, str]]:
    """The environment of every ``lcer run``: a fresh LCER_HOME, the mirror, embedded Prefect.

    The test process points at the same LCER_HOME (DuckDB and MLflow are read from here).
    """
    home = tmp_path_factory.mktemp("kill") / "home"
    home.mkdir()
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LCER_", "MLFLOW_"))
    }
    child_env = {
        **base,
        "LCER_HOME": str(home),
        "LCER_MIRROR": http_mirror,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The temporary server's first start migrates its database: more than the default 20 s
        # on a loaded 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": "1",  # shards finish one at a time
        "PYTHONUNBUFFERED": "1",  # log lines reach the file as they are written
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCER_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield child_env


def _home(env: dict[str, str]) -> Path:
    return Path(env["LCER_HOME"])


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``lcer ARGV`` in its own process group (its temporary Prefect server joins the group)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", CLI, *argv],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the whole process group, then reap the leader (bounded)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _text(log: Path) -> str:
    return log.read_text(errors="replace") if log.is_file() else ""


def _kill_when(
    argv: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool], what: str
) -> int:
    """Start ``lcer ARGV``, SIGKILL its group as soon as ``ready()`` holds; the killed pid."""
    proc = _start(argv, env, log)
    try:
        deadline = time.monotonic() + WAIT_S
        while not ready():
            assert proc.poll() is None, f"lcer ended before {what}:\n{_text(log)[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} after {WAIT_S} s:\n{_text(log)[-4000:]}"
            time.sleep(0.1)
    finally:
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def _run(argv: list[str], env: dict[str, str], log: Path) -> str:
    """``lcer ARGV`` to the end (bounded); its output. Fails on a non-zero exit."""
    proc = _start(argv, env, log)
    try:
        rc = proc.wait(timeout=WAIT_S)
    finally:
        _kill_group(proc)  # whatever it left behind, and the run itself on a timeout
    out = _text(log)
    assert rc == 0, f"lcer {' '.join(argv)} exited {rc}:\n{out[-4000:]}"
    return out


# --------------------------------------------------------------------------- MLflow and DuckDB


def _mlflow_runs(kind: str, run_key: str | None = None) -> list[Any]:
    """The MLflow runs of ml-100k of ``kind`` (train, explain), optionally of one run key."""
    from tasks import mlflow_client

    client = mlflow_client.client()
    exp = client.get_experiment_by_name("ml-100k")
    if exp is None:
        return []
    where = f"tags.`lcer.kind` = '{kind}'"
    if run_key is not None:
        where += f" and tags.`lcer.run_key` = '{run_key}'"
    return client.search_runs([exp.experiment_id], filter_string=where, max_results=1000)


def _statuses(runs: list[Any]) -> list[str]:
    return sorted(r.info.status for r in runs)


def _no_run_left_running() -> None:
    for kind in ("train", "explain"):
        assert "RUNNING" not in _statuses(_mlflow_runs(kind)), kind


def _run_id(method: str, users: int, steps: int | None) -> str:
    """The run key the pipeline gives (method, k=5, users, steps) on the module's model."""
    from lcer_core import models
    from lcer_core.datasets import load_prepared
    from lcer_core.recommender.multvae import MultVAEConfig
    from lcer_core.runs import method_configs, run_spec

    data = load_prepared("ml-100k")
    [config] = method_configs(method, "ml-100k", {"steps": steps})  # the paper's α and λ
    return run_spec(
        dataset="ml-100k",
        method=method,
        k=5,
        config=config,
        seed=0,
        n_users=users,
        model_key=models.model_key(data, MultVAEConfig(epochs=EPOCHS), models.MODEL_SEED),
    ).run_id


def _one_copy_of_every_row(store: ResultStore) -> None:
    """No (run_id, uid, sid) twice in recommendations or explanations; one explain metrics row per run."""
    for table in ("recommendations", "explanations"):
        dup = store.query(
            f"SELECT run_id, uid, sid, count(*) AS n FROM {table} GROUP BY ALL HAVING n > 1"
        )
        assert dup.height == 0, (table, dup)
    dup = store.query(
        "SELECT run_id, count(*) AS n FROM metrics WHERE kind = 'explain' GROUP BY ALL HAVING n > 1"
    )
    assert dup.height == 0, dup


def _rows(store: ResultStore, run_id: str) -> tuple[int, int]:
    recs = store.query("SELECT count(*) AS n FROM recommendations WHERE run_id = ?", [run_id])
    expl = store.query("SELECT count(*) AS n FROM explanations WHERE run_id = ?", [run_id])
    return int(recs["n"][0]), int(expl["n"][0])


# --------------------------------------------------------------------------- 1. training


class _CheckpointWatch:
    """Polls the models folder from a thread: every ``model.pt`` it ever sees must load whole
    (each version of the file, told apart by inode, size and mtime, is loaded once)."""

    def __init__(self, home: Path) -> None:
        self.root = home / "models"
        self.seen: set[tuple[int, int, int]] = set()
        self.broken: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            for path in self.root.glob("*/*/model.pt"):
                try:
                    st = path.stat()
                    version = (st.st_ino, st.st_size, st.st_mtime_ns)
                    if version in self.seen:
                        continue
                    blob = torch.load(path, map_location="cpu", weights_only=True)
                    assert "state_dict" in blob
                    self.seen.add(version)
                except FileNotFoundError:
                    pass
                except Exception as exc:  # a half-written checkpoint
                    self.broken.append(f"{path}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> _CheckpointWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_kill_during_training_then_rerun_trains_once(env: dict[str, str], tmp_path: Path) -> None:
    home = _home(env)
    killed_log, rerun_log = tmp_path / "killed.log", tmp_path / "rerun.log"
    with _CheckpointWatch(home) as watch:
        pid = _kill_when(
            TRAIN_ARGV,
            env,
            killed_log,
            lambda: f"epoch 2/{EPOCHS}:" in _text(killed_log),
            "second training epoch",
        )
        # Killed mid-training: no checkpoint (not even a partial one), the training run open.
        assert not list(home.glob("models/*/*/model.pt"))
        assert not list(home.glob("models/*/latest"))
        [killed] = _mlflow_runs("train")
        assert killed.info.status == "RUNNING"
        assert killed.data.tags["lcer.pid"] == str(pid)

        out = _run(TRAIN_ARGV, env, rerun_log)
    assert watch.broken == []
    assert len(watch.seen) == 1  # the watch saw the checkpoint, written once

    # Trained exactly once in the re-run, to the end, and the checkpoint loads.
    assert out.count("epoch 1/") == 1 and out.count(f"epoch {EPOCHS}/{EPOCHS}:") == 1
    assert len(re.findall(r"trained model \w+:", out)) == 1
    [checkpoint] = home.glob("models/ml-100k/*/model.pt")
    assert not list(checkpoint.parent.glob(".tmp-*"))
    from lcer_core import models

    assert models.load_model("ml-100k").path == checkpoint

    # MLflow: the killed training run FAILED (closed by the re-run), the new one FINISHED
    # with the registered model; nothing left RUNNING.
    runs = {r.info.run_id: r for r in _mlflow_runs("train")}
    assert runs[killed.info.run_id].info.status == "FAILED"
    assert runs[killed.info.run_id].data.tags["lcer.error"] == "owner process gone"
    [finished] = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert _statuses(list(runs.values())) == ["FAILED", "FINISHED"]
    from tasks import mlflow_client

    [version] = mlflow_client.client().search_model_versions("name = 'multvae-ml-100k'")
    assert version.run_id == finished.info.run_id
    _no_run_left_running()

    store = ResultStore()
    fia = _run_id("fia", 2, None)
    assert store.run(fia)["status"] == "finished"
    assert _rows(store, fia) == (10, 10)
    _one_copy_of_every_row(store)


# --------------------------------------------------------------------------- 2. explanation


def _shard_mtimes(home: Path, run_id: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (home / "work" / run_id).glob("shard-*.parquet")}


def test_kill_during_explanation_then_rerun_reuses_finished_shards(
    env: dict[str, str], tmp_path: Path
) -> None:
    home = _home(env)
    killed_log, rerun_log = tmp_path / "killed.log", tmp_path / "rerun.log"
    run_id_box: list[str] = []

    def first_shard_done() -> bool:
        if not run_id_box and list(home.glob("models/ml-100k/*/model.pt")):
            run_id_box.append(_run_id("lcer", 4, 300))
        return bool(run_id_box) and len(_shard_mtimes(home, run_id_box[0])) >= 1

    pid = _kill_when(EXPLAIN_ARGV, env, killed_log, first_shard_done, "finished shard")
    run_id = run_id_box[0]
    done_before = _shard_mtimes(home, run_id)
    assert 1 <= len(done_before) < 4, done_before

    # The run is open in DuckDB (no rows) and in MLflow (RUNNING, owned by the dead process).
    store = ResultStore()
    assert store.run(run_id)["status"] == "running"
    assert _rows(store, run_id) == (0, 0)
    [killed] = _mlflow_runs("explain", run_id)
    assert killed.info.status == "RUNNING" and killed.data.tags["lcer.pid"] == str(pid)

    out = _run(EXPLAIN_ARGV, env, rerun_log)
    assert "training model" not in out  # the model of the first test is reused
    after = _shard_mtimes(home, run_id)
    assert sorted(after) == [f"shard-{i:04d}.parquet" for i in range(4)]
    # The shards that had finished are the same files; only the others were computed.
    assert {name: after[name] for name in done_before} == done_before
    computed = re.findall(r"shard (\d+) of ml-100k/lcer k=5: .* CEs found", out)
    assert len(computed) == 4 - len(done_before)
    assert not {f"shard-{int(i):04d}.parquet" for i in computed} & set(done_before)

    run = store.run(run_id)
    assert run["status"] == "finished"
    assert _rows(store, run_id) == (20, 20)  # 4 users x top-5, once each
    _one_copy_of_every_row(store)

    runs = {r.info.run_id: r for r in _mlflow_runs("explain", run_id)}
    assert runs[killed.info.run_id].info.status == "FAILED"
    assert _statuses(list(runs.values())) == ["FAILED", "FINISHED"]
    [finished] = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert run["mlflow_run_id"] == finished.info.run_id
    assert finished.data.metrics["fns_pct"] == pytest.approx(store.table2("ml-100k").filter(
        pl.col("run_id") == run_id)["fns_pct"][0])  # fmt: skip
    _no_run_left_running()


# --------------------------------------------------------------------------- 3. DuckDB write


def test_kill_during_duckdb_write_keeps_previous_rows(env: dict[str, str], tmp_path: Path) -> None:
    fia = _run_id("fia", 2, None)
    store = ResultStore()
    earlier = store.run(fia) if store.path.exists() else None
    if earlier is None or earlier["status"] != "finished":  # the first test did not leave it
        _run(TRAIN_ARGV, env, tmp_path / "setup.log")
    lcer = _run_id("lcer", 2, 40)
    assert store.run(lcer) is None

    def snapshot() -> dict[str, Any]:
        return {
            "counts": store.counts(),
            "fia_expl": store.explanations(fia).sort("uid", "rank"),
            "fia_recs": store.recommendations(fia).sort("uid", "rank"),
            "fia_run": store.run(fia),
            "fia_metrics": store.query("SELECT * FROM metrics WHERE run_id = ?", [fia]),
        }

    before = snapshot()
    fia_tracked = _mlflow_runs("explain", fia)
    killed_log, rerun_log = tmp_path / "killed.log", tmp_path / "rerun.log"
    # The fault comes from the harness (tests/faults/sitecustomize.py), not from the product.
    marker = f"LCER_FAULT_HOLD_WRITE: holding the write transaction of run {fia}"
    pid = _kill_when(
        WRITE_ARGV,
        {**env, "PYTHONPATH": FAULTS, "LCER_FAULT_HOLD_WRITE": "120"},
        killed_log,
        lambda: marker in _text(killed_log),
        "write transaction of the fia run",
    )
    # Killed inside the transaction that had deleted and re-inserted the fia rows: the file
    # opens, every table is as before (the new LCER run only has its 'running' row).
    after = snapshot()
    assert after["counts"] == {**before["counts"], "runs": before["counts"]["runs"] + 1}
    for key in ("fia_expl", "fia_recs", "fia_metrics"):
        assert after[key].equals(before[key]), key
    assert after["fia_run"] == before["fia_run"]
    assert store.run(lcer)["status"] == "running"
    [killed] = _mlflow_runs("explain", lcer)
    assert killed.info.status == "RUNNING" and killed.data.tags["lcer.pid"] == str(pid)

    out = _run(WRITE_ARGV, env, rerun_log)
    assert "LCER_FAULT_HOLD_WRITE" not in out
    assert "training model" not in out and "CEs found" not in out  # everything was reused
    for run_id in (fia, lcer):
        assert store.run(run_id)["status"] == "finished"
        assert _rows(store, run_id) == (10, 10)
    _one_copy_of_every_row(store)
    counts = store.counts()
    for table in ("recommendations", "explanations"):
        assert counts[table] == before["counts"][table] + 10
    assert counts["runs"] == before["counts"]["runs"] + 1
    assert store.explanations(fia).sort("uid", "rank").equals(before["fia_expl"])

    # MLflow: the LCER run killed before it was tracked FAILED, its re-run FINISHED; the fia
    # run (finished in DuckDB before) keeps its one FINISHED run, nothing new.
    assert _statuses(_mlflow_runs("explain", lcer)) == ["FAILED", "FINISHED"]
    assert {r.info.run_id for r in _mlflow_runs("explain", fia)} == {
        r.info.run_id for r in fia_tracked
    }
    assert _statuses(fia_tracked) == ["FINISHED"]
    _no_run_left_running()
