"""Faults of the results store, caused for real: a writer killed mid-transaction, and two
processes wanting the same DuckDB file at once.

Run as a script, this file is the child process of those tests (``loop``, ``hold``, ``write``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import duckdb
import polars as pl
import pytest

from lcer_core.errors import StoreLockedError
from lcer_core.store import ResultStore

BIG = 1_000_000  # rows of the run the killed child writes: long enough to be killed mid-write


def big_run(
    run_id: str, n: int
) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """A run with ``n`` recommendations and ``n`` explanations; ``n_pairs`` says which version."""
    i = pl.int_range(0, n, eager=True)
    recs = pl.DataFrame(
        {"uid": i // 10, "rank": (i % 10 + 1).cast(pl.Int32), "sid": i, "score": i / n}
    )
    expl = recs.select("uid", "sid", "rank").with_columns(
        ce_items=pl.concat_list(
            (pl.col("sid") % 97).cast(pl.Int32), (pl.col("sid") % 89).cast(pl.Int32)
        ),
        ce_importance=pl.concat_list(pl.lit(0.9), pl.lit(0.7)),
        sufficient=pl.lit(True),
        necessary=pl.lit(False),
    )
    run = {
        "run_id": run_id,
        "dataset": "ml-100k",
        "method": "lcer",
        "k": 10,
        "alpha": 0.1,
        "lam": 0.01,
    }
    metrics = {
        "n_pairs": n,
        "val_pct": 100.0,
        "len": 2.0,
        "ps_pct": 50.0,
        "pn_pct": 0.0,
        "fns_pct": 0.0,
    }
    return run, recs, expl, metrics


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def _wait_line(stream: IO[str], prefix: str, proc: subprocess.Popen[str]) -> str:
    while True:
        line = stream.readline()
        if not line:
            raise AssertionError(
                f"child ended before {prefix!r}: {proc.stderr.read() if proc.stderr else ''}"
            )
        if line.startswith(prefix):
            return line.strip()


def _lock_is_held(path: Path) -> bool:
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.IOException as exc:
        if "Could not set lock" in str(exc):
            return True
        raise
    return False


def _run_counts(store: ResultStore, run_id: str) -> tuple[int, int, int, list[int]]:
    counts = store.query(
        "SELECT (SELECT count(*) FROM runs WHERE run_id = $1) AS runs, "
        "(SELECT count(*) FROM recommendations WHERE run_id = $1) AS recs, "
        "(SELECT count(*) FROM explanations WHERE run_id = $1) AS expl",
        [run_id],
    ).row(0)
    n_pairs = store.query("SELECT n_pairs FROM metrics WHERE run_id = ?", [run_id])[
        "n_pairs"
    ].to_list()
    return counts[0], counts[1], counts[2], n_pairs


def test_a_writer_killed_mid_transaction_leaves_the_previous_rows(tmp_path: Path) -> None:
    path = tmp_path / "lcer.duckdb"
    store = ResultStore(path)
    store.write_run(*big_run("big", 1000))
    store.write_run(*big_run("other", 50))
    child = _spawn("loop", str(path))
    try:
        _wait_line(child.stdout, "begin 2", child)  # type: ignore[arg-type]
        while not _lock_is_held(path):  # the child has opened the file for its transaction
            time.sleep(0.002)
        time.sleep(0.15)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert "done 2" not in out, "the write finished before the kill: make BIG larger"
    # The previous version of the run, whole; the other run untouched; the file opens and
    # takes new writes.
    assert _run_counts(store, "big") == (1, 1000, 1000, [1000])
    assert _run_counts(store, "other") == (1, 50, 50, [50])
    store.write_run(*big_run("big", 2000))
    assert _run_counts(store, "big") == (1, 2000, 2000, [2000])
    assert store.counts()["runs"] == 2


def test_a_second_writer_waits_for_the_lock_or_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "lcer.duckdb"
    ResultStore(path).write_run(*big_run("first", 100))
    holder = _spawn("hold", str(path), "4")
    try:
        _wait_line(holder.stdout, "locked", holder)  # type: ignore[arg-type]
        impatient = ResultStore(path, lock_timeout=0.5)
        with pytest.raises(StoreLockedError) as err:
            impatient.write_run(*big_run("second", 100))
        message = str(err.value)
        assert "\n" not in message
        assert f"is locked by another process (PID {holder.pid})" in message
        assert "gave up after 0.5 s" in message
        with pytest.raises(StoreLockedError):
            impatient.query("SELECT count(*) FROM runs")
        # A patient writer waits for the holder to let go, then writes.
        ResultStore(path, lock_timeout=60).write_run(*big_run("second", 100))
        assert holder.poll() is not None, (
            "the write went through while the other process held the file"
        )
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    store = ResultStore(path)
    assert _run_counts(store, "first") == (1, 100, 100, [100])
    assert _run_counts(store, "second") == (1, 100, 100, [100])


def test_two_processes_writing_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "lcer.duckdb"
    ResultStore(path).schema_version()
    writers = [_spawn("write", str(path), name, "3") for name in ("a", "b")]
    for proc in writers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split() == ["ok"]
    store = ResultStore(path)
    for name in ("a", "b"):
        assert _run_counts(store, name) == (1, 20_000, 20_000, [20_000])
    assert store.counts()["runs"] == 2


def _child(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    if mode == "loop":  # rewrite the run "big" forever, each version a different size
        store = ResultStore(path)
        run, recs, expl, metrics = big_run("big", BIG + 100)
        version = 2
        while True:
            n = BIG + version
            print(f"begin {version}", flush=True)
            store.write_run(run, recs.head(n), expl.head(n), {**metrics, "n_pairs": n})
            print(f"done {version}", flush=True)
            version += 1
    elif mode == "hold":  # another process holding the file read-write for a while
        con = duckdb.connect(path)
        print("locked", flush=True)
        time.sleep(float(argv[2]))
        con.close()
    elif mode == "write":  # write one run several times, through the store
        store = ResultStore(path)
        for _ in range(int(argv[3])):
            store.write_run(*big_run(argv[2], 20_000))
        print("ok", flush=True)


if __name__ == "__main__":
    _child(sys.argv[1:])
