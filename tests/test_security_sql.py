"""Security, part A of issue 15, attacked for real: `lcer sql` reads the results database and
nothing else; no pickled record under LCER_HOME is ever read; MLflow sends no telemetry; a
`kill -9` of `lcer ui` frees its port.

Every attack runs the real command in a child process against a real DuckDB file (or a real
`lcer run` against a planted Prefect result record) and checks the whole LCER_HOME tree byte
for byte before and after (:func:`home_digest.tree_digest`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars as pl
import pytest
from home_digest import tree_digest
from test_store import write

from lcer_core.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from lcer_core.cli import main; main(sys.argv[1:])"
# Environment variables by which MLflow decides by itself that it runs under CI or a test.
_CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY")


def lcer(
    argv: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``lcer ARGV`` in a child process (the installed entry point, this checkout's code)."""
    return subprocess.run(
        [sys.executable, "-c", CLI, *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2, nothing on stdout, exactly one ``error:`` line holding every needle."""
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert done.stdout == "", done.stdout[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- lcer sql

# One child process runs many `lcer sql` commands through the CLI's entry point, one after
# the other, and fingerprints the watched folders around each (a process per command costs
# seconds of start-up on a busy machine).
_DRIVER = """
import contextlib, io, json, sys, traceback
sys.path.insert(0, sys.argv[1])
from home_digest import tree_digest
from lcer_core.cli import main
watched, commands = json.loads(sys.argv[2]), json.loads(sys.argv[3])
results = {}
for name, argv in commands.items():
    before = [tree_digest(w) for w in watched]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = -1
    after = [tree_digest(w) for w in watched]
    changed = [w for w, b, a in zip(watched, before, after) if a != b]
    results[name] = {"code": code, "out": out.getvalue(), "err": err.getvalue(), "changed": changed}
print(json.dumps(results))
"""


def run_commands(
    commands: dict[str, list[str]], env: dict[str, str], watched: list[Path]
) -> dict[str, dict[str, object]]:
    """Run each ``lcer ARGV`` of ``commands`` in one child process: exit status, stdout,
    stderr, and which of the ``watched`` folders it changed (byte for byte)."""
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(Path(__file__).parent),
         json.dumps([str(w) for w in watched]), json.dumps(commands)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def assert_refused(result: dict[str, object], *needles: str) -> str:
    """Exit status 2, nothing on stdout, exactly one ``error:`` line holding every needle."""
    assert result["code"] == 2, result
    assert result["out"] == "", result
    lines = str(result["err"]).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result["err"]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def sql_home(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A home with a results database holding two runs, prepared data, another DuckDB file
    and a secret beside it; a fake user HOME and an empty folder outside, all watched."""
    root = tmp_path_factory.mktemp("sql-attacks")
    home = root / "home"
    with ResultStore(home / "results" / "lcer.duckdb") as store:
        write(store, method="lcer")
        write(store, method="fia")
    data = home / "data" / "ml-100k"
    data.mkdir(parents=True)
    pl.DataFrame({"uid": [1, 2], "sid": [3, 4]}).write_parquet(data / "train.parquet")
    con = duckdb.connect(str(home / "other.duckdb"))
    con.execute("CREATE TABLE t AS SELECT 42 AS answer")
    con.close()
    (root / "secret.txt").write_text("the secret\n")
    (root / "secret.csv").write_text("a,b\n1,2\n")
    outside, user_home = root / "outside", root / "user-home"
    outside.mkdir()
    user_home.mkdir()
    env = {
        **os.environ,
        "LCER_HOME": str(home),
        "HOME": str(user_home),  # where DuckDB would keep extensions and secrets
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return SimpleNamespace(home=home, root=root, outside=outside, user_home=user_home, env=env)


# (id, SQL); {home}, {root} and {out} are filled in. Each one works on DuckDB's defaults.
ATTACKS = [
    # writes through COPY: delete the results folder, overwrite prepared data, write anywhere
    ("copy-partition-deletes-results", "COPY (SELECT 1 AS a, 2 AS b) TO '{home}/results' (FORMAT parquet, PARTITION_BY (a), OVERWRITE)"),
    ("copy-overwrites-prepared-data", "COPY (SELECT 1 AS a) TO '{home}/data/ml-100k/train.parquet' (FORMAT parquet)"),
    ("copy-plants-prefect-record", "COPY (SELECT 'x' AS a) TO '{home}/prefect-results/key' (FORMAT csv)"),
    ("copy-writes-outside", "COPY (SELECT 1 AS a) TO '{out}/x.csv'"),
    ("export-database", "EXPORT DATABASE '{out}/export'"),
    # other databases
    ("attach-read-write-drop", "ATTACH '{home}/other.duckdb' AS o (READ_WRITE); DROP TABLE o.t"),
    ("attach-read-only", "ATTACH '{home}/other.duckdb' AS o (READ_ONLY); SELECT * FROM o.t"),
    ("attach-new-file", "ATTACH '{out}/new.duckdb' AS n"),
    ("attach-memory", "ATTACH ':memory:' AS m"),
    ("read-duckdb", "SELECT * FROM read_duckdb('{home}/other.duckdb', table_name='t')"),
    # reads of any file
    ("read-text", "SELECT * FROM read_text('{root}/secret.txt')"),
    ("read-blob", "SELECT * FROM read_blob('{root}/secret.txt')"),
    ("read-csv", "SELECT * FROM read_csv('{root}/secret.csv')"),
    ("read-csv-replacement", "SELECT * FROM '{root}/secret.csv'"),
    ("read-parquet", "SELECT * FROM read_parquet('{home}/data/ml-100k/train.parquet')"),
    ("glob", "SELECT * FROM glob('{root}/*')"),
    ("sniff-csv", "SELECT * FROM sniff_csv('{root}/secret.csv')"),
    # extensions and secrets
    ("load-extension-file", "LOAD '{root}/evil.duckdb_extension'"),
    ("install-extension", "INSTALL httpfs"),
    ("persistent-secret", "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')"),
    # settings
    ("set-external-access", "SET enable_external_access = true"),
    ("set-threads", "SET threads = 1"),
    ("set-global", "SET GLOBAL memory_limit = '1GB'"),
    ("pragma-setting", "PRAGMA threads = 1"),
    ("reset-setting", "RESET threads"),
    ("pragma-profiling-output", "PRAGMA enable_profiling = 'json'; SET profiling_output = '{out}/p.json'"),
    ("enable-logging-to-file", "CALL enable_logging(storage = 'file', storage_path = '{out}/logs')"),
    # the database itself stays read-only
    ("drop-table", "DROP TABLE runs"),
    ("delete-rows", "DELETE FROM runs"),
    ("create-table", "CREATE TABLE x AS SELECT 1"),
]  # fmt: skip


@pytest.fixture(scope="module")
def attacks(sql_home: SimpleNamespace) -> dict[str, dict[str, object]]:
    """Every attack through `lcer sql`, in order, each watched on its own."""
    fill = {"home": sql_home.home, "root": sql_home.root, "out": sql_home.outside}
    commands = {name: ["sql", sql.format(**fill)] for name, sql in ATTACKS}
    watched = [sql_home.home, sql_home.outside, sql_home.user_home]
    before = [tree_digest(w) for w in watched]
    results = run_commands(commands, sql_home.env, watched)
    results["(all)"] = {"unchanged": [tree_digest(w) for w in watched] == before}
    return results


@pytest.mark.parametrize("name", [name for name, _ in ATTACKS])
def test_lcer_sql_refuses_what_is_not_a_read_of_the_results_database(
    attacks: dict[str, dict[str, object]], name: str
) -> None:
    result = attacks[name]
    assert_refused(result, "SQL error")
    assert result["changed"] == []  # home, the folder outside and ~ byte for byte as before


def test_the_attacks_leave_every_watched_folder_as_it_was(
    attacks: dict[str, dict[str, object]], sql_home: SimpleNamespace
) -> None:
    assert attacks["(all)"]["unchanged"]
    assert tree_digest(sql_home.outside) == tree_digest(sql_home.user_home) == {}


def test_lcer_sql_still_reads_every_view_and_the_readme_queries(
    attacks: dict[str, dict[str, object]], sql_home: SimpleNamespace
) -> None:
    queries = {
        "table2": "select * from table2 where dataset = 'ml-100k' order by k, method",
        "item_explanations": "select sid, title, popularity, explanation_count, mean_importance "
        "from item_explanations where method = 'lcer' and k = 5 "
        "order by explanation_count desc limit 10",
        "table3": "select * from table3",
        "run_results": "select run_id, method from run_results",
        "strict": "select method, k, strict_fns_pct, grad_steps_per_pair, catalogue_per_pair, "
        "selects_on from strict where dataset = 'ml-100k' and list_contains(selects_on, 'topk')",
        "explanation_items": "select count(*) as n from explanation_items",
        "settings": "select current_setting('enable_external_access') as external, "
        "current_setting('lock_configuration') as locked",
    }
    commands = {name: ["sql", q, "--format", "csv"] for name, q in queries.items()}
    results = run_commands(commands, sql_home.env, [sql_home.home])
    for name, result in results.items():
        assert result["code"] == 0 and result["changed"] == [], (name, result)
    lines = {name: str(result["out"]).splitlines() for name, result in results.items()}
    assert len(lines["table2"]) == 3 and lines["table2"][0].startswith("dataset,method,k,")
    assert sorted(line.split(",")[1] for line in lines["table2"][1:]) == ["fia", "lcer"]
    assert len(lines["item_explanations"]) > 1
    assert int(lines["explanation_items"][1]) > 0
    assert lines["settings"] == ["external,locked", "false,true"]
    assert lines["strict"][0].startswith("method,k,strict_fns_pct,")


def test_lcer_sql_without_a_database_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "LCER_HOME": str(home)}
    done = lcer(["sql", "select 1"], env)
    assert_one_line(done, f"no results database at {home / 'results' / 'lcer.duckdb'}")
    assert tree_digest(home) == {}  # no database, no results/ folder


# --------------------------------------------------------------------------- pickles


class _Marker:
    """A pickle payload that creates a file when unpickled (by calling ``open(path, "w")``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _shard_cache_keys(home: Path) -> list[str]:
    """The cache keys that a shard task with Prefect caching (INPUTS + TASK_SOURCE, as before
    this change) would look up for the shards of every run stored in ``home``."""
    from prefect.cache_policies import INPUTS, TASK_SOURCE

    from lcer_core.runs import run_spec
    from tasks.explain import explain_shard

    fields = ["run_id", "dataset", "method", "k", "alpha", "lam", "steps", "seed", "n_users"]
    runs = ResultStore(home / "results" / "lcer.duckdb").query(
        f"SELECT {', '.join(fields)}, model_key FROM runs"
    )
    keys = []
    for row in runs.iter_rows(named=True):
        options = {n: row.pop(n) for n in ("alpha", "lam", "steps")}
        run_id = row.pop("run_id")
        spec = run_spec(**row, **options)
        assert spec.run_id == run_id
        for index, path in enumerate(sorted((home / "work" / spec.run_id).glob("shard-*.parquet"))):
            users = pl.read_parquet(path, columns=["uid"])["uid"].unique(maintain_order=True)
            inputs = {"spec": spec, "index": index, "users": users.to_list(), "path": str(path)}
            key = (INPUTS + TASK_SOURCE).compute_key(
                task_ctx=SimpleNamespace(task=explain_shard), inputs=inputs, flow_parameters={}
            )
            assert key is not None
            keys.append(key)
    return keys


@pytest.mark.slow
def test_a_planted_pickle_record_is_never_read_by_lcer_run(
    tmp_path: Path, http_mirror: str
) -> None:
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "LCER_HOME": str(home), "LCER_MIRROR": http_mirror}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    argv = ["run", "ml-100k", "--methods", "fia", "--k", "5", "--users", "2",
            "--shard-size", "1", "--epochs", "1"]  # fmt: skip
    first = lcer(argv, env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    shard_files = sorted((home / "work").rglob("shard-*.parquet"))
    assert len(shard_files) == 2
    # The task's result is the shard file: no Prefect result record is written anywhere here.
    assert not (home / "prefect-results").exists()
    assert not [p for p in home.rglob("*") if p.is_file() and p.parent.name == "storage"]

    # Plant, where the old cache would look, a record whose payload runs code when unpickled.
    marker = tmp_path / "unpickled"
    records = home / "prefect-results"
    records.mkdir()
    for key in _shard_cache_keys(home):
        meta = ResultRecordMetadata(
            storage_key=key, serializer=PickleSerializer(picklelib="pickle")
        )
        (records / key).write_bytes(ResultRecord(metadata=meta, result=_Marker(marker)).serialize())
    with pickle.loads(pickle.dumps(_Marker(tmp_path / "check"))):  # the payload works
        pass
    assert (tmp_path / "check").exists()
    planted = tree_digest(records)
    shards_before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in shard_files}

    again = lcer(argv, env, timeout=600)
    assert not marker.exists(), "a planted pickle record was unpickled"
    assert again.returncode == 0, again.stderr[-3000:]
    assert tree_digest(records) == planted
    # The finished shards were reused from their files (same bytes, same mtime), not recomputed.
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in shard_files} == shards_before
    assert "CEs found" not in again.stdout + again.stderr


def test_a_shard_file_is_reused_only_with_its_own_key(tmp_path: Path) -> None:
    from lcer_core import shards
    from lcer_core.explainers import FIAConfig
    from lcer_core.fsio import write_parquet_atomic
    from lcer_core.runs import RunSpec

    spec = RunSpec("run", "ml-100k", "fia", 5, 0, 2, "m1", FIAConfig())
    key = shards.shard_key(spec, 0, [3, 4])
    assert key != shards.shard_key(spec, 1, [3, 4]) != shards.shard_key(spec, 0, [3, 5])
    frame = pl.DataFrame({"uid": [3, 3, 4], "rank": [1, 2, 1]})
    path = tmp_path / "shard-0000.parquet"
    write_parquet_atomic(frame, path, metadata={shards.SHARD_KEY_FIELD: key})
    assert shards.shard_is_complete(path, [3, 4], key)
    assert not shards.shard_is_complete(path, [3, 4], shards.shard_key(spec, 1, [3, 4]))
    write_parquet_atomic(frame, path)  # the same rows without a key: not reusable
    assert not shards.shard_is_complete(path, [3, 4], key)
    path.write_bytes(b"PAR1" + b"\0" * 64)  # damaged
    assert not shards.shard_is_complete(path, [3, 4], key)


# --------------------------------------------------------------------------- MLflow


def test_mlflow_telemetry_is_off_wherever_lcer_starts_mlflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _CI_MARKERS and k != "DO_NOT_TRACK"}
    probe = (
        "import tasks, mlflow  # as tasks.mlflow_client does\n"
        "from mlflow.telemetry.client import get_telemetry_client\n"
        "from mlflow.telemetry.utils import is_telemetry_disabled\n"
        "print(is_telemetry_disabled(), get_telemetry_client() is None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]

    from lcer_core.cli.mlflow_ui import server_env

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert server_env()["MLFLOW_DISABLE_TELEMETRY"] == "true"  # the `lcer ui` server


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_kill_9_of_lcer_ui_frees_its_port(tmp_path: Path) -> None:
    from lcer_core.cli.mlflow_ui import free_port

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "LCER_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_DISABLE_TELEMETRY", None)
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "ui", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while f"MLflow UI at http://127.0.0.1:{port}" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert not _port_is_free(port)
        server = _children(proc.pid)
        assert server, "lcer ui has no server child"
        environ = Path(f"/proc/{server[0]}/environ").read_bytes().split(b"\0")

        os.kill(proc.pid, signal.SIGKILL)  # the process we started, and only it
        proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        while not _port_is_free(port):
            assert time.monotonic() < deadline, f"port {port} still held after kill -9 of lcer ui"
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in server):
            assert time.monotonic() < deadline, "the mlflow server outlived lcer ui"
            time.sleep(0.2)
        assert b"MLFLOW_DISABLE_TELEMETRY=true" in environ  # and it sent no usage data
    finally:  # whatever is left of what this test started: its group and the server's
        for group in (proc.pid, *server):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
