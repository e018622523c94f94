"""What the command line prints and writes is data, never commands (issue 23, items 5, 6, 9).

Each attack is made for real: markup and escape sequences in query results and in stored
names and titles, a device node or a FIFO as an output file, a query that runs too long, a
server bound to every interface, a deleted current folder.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dataset_fixtures import run_cli, synthetic_ratings
from test_store import write

from lcer_core.datasets import load_prepared
from lcer_core.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from lcer_core.cli import main; main(sys.argv[1:])"
ESC, BIDI = "\x1b", "\u202e"
# Markup that Rich would act on (a closing tag with no opening one, a hyperlink, a style),
# terminal escapes (clear screen, an OSC 8 hyperlink), a bidi override and matplotlib mathtext.
EVIL = f"[/x][link=https://evil.example]click[/link][bold red]{ESC}[2J{ESC}]8;;https://e{ESC}\\{BIDI}gpj.exe$\\nocmd$"
SHOWN = "[/x][link=https://evil.example]click[/link][bold red]\\x1b[2J\\x1b]8;;https://e\\x1b\\\\u202egpj.exe$\\nocmd$"
# A query that runs for minutes: ten billion pairs.
LONG_QUERY = "SELECT count(*) FROM range(100000) a, range(100000) b WHERE a.range * b.range = 7"


def _one_error_line(code: int, out: str, err: str, *needles: str) -> str:
    assert code == 2 and out == "", (code, out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _assert_inert(text: str) -> None:
    """No character of ``text`` can drive a terminal."""
    assert ESC not in text and BIDI not in text, repr(text[-500:])
    assert not any(0x80 <= ord(c) < 0xA0 for c in text), repr(text[-500:])


def _child(argv: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CLI, *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture()
def store_home(lcer_home: Path) -> Path:
    """A home whose results database holds a run of a method and items named with markup and
    escapes."""
    sids = list(range(130))
    items = pl.DataFrame(
        {
            "sid": sids,
            "raw_id": [str(s + 1) for s in sids],
            "title": [f"{EVIL} {s}" for s in sids],
            "popularity": [1 + (s * 7) % 41 for s in sids],
        }
    )
    stats = {"dataset": "ml-100k", "users": 938, "items": 1447, "interactions": 55361}
    with ResultStore() as store:
        store.upsert_dataset(stats, items)
        write(store, method="lcer")
        write(store, method=EVIL)
    return lcer_home


# --------------------------------------------------------------------------- lcer sql


def test_sql_markup_is_printed_as_text(store_home: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["sql", "select '[/x]' as a, 1 as \"[/y]\""], capsys)
    assert code == 0, err
    assert "[/x]" in out and "[/y]" in out
    code, out, err = run_cli(["sql", "select '[link=https://evil.example]t[/link]' as a"], capsys)
    assert code == 0 and "[link=https://evil.example]t[/link]" in out, (out, err)
    code, out, err = run_cli(["sql", "call duckdb_settings()"], capsys)
    assert code == 0 and "access_mode" in out and "memory_limit" in out, err[-2000:]
    _assert_inert(out)


def test_sql_escape_sequences_are_escaped_in_every_format(
    store_home: Path, capsys: pytest.CaptureFixture
) -> None:
    query = "select method from runs where method like '[/x]%'"
    code, out, err = run_cli(["sql", query], capsys)
    assert code == 0, err
    _assert_inert(out)
    assert SHOWN in out
    code, out, err = run_cli(["sql", "-f", "csv", query], capsys)
    assert code == 0, err
    _assert_inert(out)
    assert out.splitlines() == ["method", SHOWN]
    code, out, err = run_cli(["sql", "-f", "json", query], capsys)
    assert code == 0, err
    _assert_inert(out)
    assert json.loads(out) == [{"method": EVIL}]  # JSON escapes losslessly


def test_sql_blob_map_struct_list_as_csv_and_json(
    store_home: Path, capsys: pytest.CaptureFixture
) -> None:
    query = (
        "select '\\x1Bab'::blob as b, map([1, 2], ['x', chr(8238)]) as m, "
        "{'k': chr(27)} as s, [1, 2] as l"
    )
    code, out, err = run_cli(["sql", "-f", "csv", query], capsys)
    assert code == 0, err
    _assert_inert(out)
    assert out.splitlines() == [
        "b,m,s,l",
        '1b6162,"{""1"": ""x"", ""2"": ""\\u202e""}","{""k"": ""\\u001b""}","[1, 2]"',
    ]
    code, out, err = run_cli(["sql", "-f", "json", query], capsys)
    assert code == 0, err
    _assert_inert(out)
    assert json.loads(out) == [
        {"b": "1b6162", "m": {"1": "x", "2": BIDI}, "s": {"k": ESC}, "l": [1, 2]}
    ]
    code, out, err = run_cli(["sql", query], capsys)
    assert code == 0 and "1b6162" in out, err
    _assert_inert(out)


def test_sql_memory_limit_is_set_on_the_connection(
    store_home: Path, capsys: pytest.CaptureFixture
) -> None:
    query = "select current_setting('memory_limit') as m, current_setting('access_mode') as a"
    code, out, err = run_cli(["sql", "-f", "json", query], capsys)
    assert code == 0, err
    assert json.loads(out) == [{"m": "1.8 GiB", "a": "read_only"}]  # 2GB, DuckDB's words
    code, out, err = run_cli(["sql", "-f", "json", "--memory-limit", "100MB", query], capsys)
    assert code == 0 and json.loads(out)[0]["m"] == "95.3 MiB", err
    _one_error_line(
        *run_cli(["sql", "--memory-limit", "lots", "select 1"], capsys),
        "--memory-limit must be a size such as 2GB or 500MB, not 'lots'",
    )
    _one_error_line(
        *run_cli(
            ["sql", "--memory-limit", "1MB", "select list(range) from range(10000000)"], capsys
        ),
        "Out of Memory",
        "1MB",
    )


def test_sql_past_its_timeout_is_one_line_and_frees_the_file_for_writers(
    store_home: Path,
) -> None:
    """A long query is stopped after --timeout; a pipeline's write waiting for the file
    meanwhile goes through as soon as it is."""
    env = {**os.environ, "LCER_HOME": str(store_home)}
    path = store_home / "results" / "lcer.duckdb"
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "sql", "--timeout", "3", LONG_QUERY],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while time.monotonic() - start < 60:  # until the query holds the file
            try:
                duckdb.connect(str(path)).close()
            except duckdb.IOException:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        else:
            pytest.fail("lcer sql never opened the database")
        held = time.monotonic()
        with ResultStore(path, lock_timeout=60) as store:
            write(store, method="fia")  # what a pipeline's store step does
        waited = time.monotonic() - held
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _one_error_line(proc.returncode, out, err, "the query ran longer than --timeout 3 s")
    assert waited < 3 + 10, waited  # the query's 3 s, then the file is free
    assert time.monotonic() - start < 40


def test_sql_default_timeout_is_below_a_writers_wait(capsys: pytest.CaptureFixture) -> None:
    from lcer_core.cli.results import SQL_TIMEOUT_S
    from lcer_core.store import DEFAULT_LOCK_TIMEOUT

    assert 0 < SQL_TIMEOUT_S < DEFAULT_LOCK_TIMEOUT
    _one_error_line(
        *run_cli(["sql", "--timeout", "0", "select 1"], capsys),
        "--timeout must be a positive number of seconds",
    )


# --------------------------------------------------------------------------- lcer report


def test_report_prints_stored_names_as_data(
    store_home: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(["report", "ml-100k", "--no-train", "--per-seed"], capsys)
    assert code == 0, err[-3000:]
    _assert_inert(out)
    assert SHOWN in out  # the markup shown, not acted on
    code, out, err = run_cli(["report", "ml-100k", "--no-train", "-f", "json"], capsys)
    assert code == 0, err[-3000:]
    _assert_inert(out)
    assert EVIL in {r["method"] for r in json.loads(out)["table2"]}


# --------------------------------------------------------------------------- output files


def _special_node(path: Path) -> str:
    """A character device like /dev/null (as root), else a FIFO, at ``path``; its kind."""
    if os.geteuid() == 0:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        return "a character device"
    os.mkfifo(path)
    return "a FIFO"


def _check_node(path: Path, kind: str) -> None:
    mode = path.lstat().st_mode
    assert stat.S_ISCHR(mode) if kind == "a character device" else stat.S_ISFIFO(mode), oct(mode)


@pytest.mark.parametrize("node", ["device", "fifo"])
def test_report_html_refuses_a_special_file(
    store_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, node: str
) -> None:
    target = tmp_path / "out" / "page.html"
    target.parent.mkdir()
    kind = _special_node(target) if node == "device" else (os.mkfifo(target) or "a FIFO")
    _one_error_line(
        *run_cli(["report", "ml-100k", "--no-train", "--html", str(target)], capsys),
        f"cannot write {target}: it is {kind}, not a regular file",
    )
    _check_node(target, kind)
    assert os.listdir(target.parent) == ["page.html"]  # no temporary left


@pytest.mark.parametrize("node", ["device", "fifo"])
def test_synth_out_refuses_a_special_file(
    lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, node: str
) -> None:
    target = tmp_path / "out" / "x.parquet"
    target.parent.mkdir()
    kind = _special_node(target) if node == "device" else (os.mkfifo(target) or "a FIFO")
    _one_error_line(
        *run_cli(["synth", "epinions", "--out", str(target)], capsys),
        f"cannot write {target}: it is {kind}, not a regular file",
    )
    _check_node(target, kind)
    assert os.listdir(target.parent) == ["x.parquet"]


def test_a_replaced_file_keeps_its_mode(
    store_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    page, table = tmp_path / "page.html", tmp_path / "x.parquet"
    for path in (page, table):
        path.write_text("old")
        path.chmod(0o600)
    code, _, err = run_cli(["report", "ml-100k", "--no-train", "--html", str(page)], capsys)
    assert code == 0, err[-2000:]
    code, _, err = run_cli(["synth", "epinions", "--out", str(table)], capsys)
    assert code == 0, err[-2000:]
    for path in (page, table):
        assert path.read_bytes() != b"old"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# --------------------------------------------------------------------------- smaller


def test_ui_on_a_non_loopback_host_says_so_in_one_line(lcer_home: Path) -> None:
    env = {**os.environ, "LCER_HOME": str(lcer_home)}
    done = _child(
        ["ui", "--host", "0.0.0.0", "--port", "0", "--ready-timeout", "0.5"], env, timeout=120
    )
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stderr
    assert "--host 0.0.0.0 serves MLflow's API to the network without authentication" in warnings[0]
    done = _child(["ui", "--port", "0", "--ready-timeout", "0.5"], env, timeout=120)
    assert "warning" not in done.stderr, done.stderr

    from lcer_core.cli.mlflow_ui import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")


@pytest.mark.parametrize(
    "argv", [["train", "ml-100k"], ["synth", "epinions", "--out", "x.parquet"]]
)
def test_deleted_current_folder_is_one_line(tmp_path: Path, argv: list[str]) -> None:
    gone, home = tmp_path / "gone", tmp_path / "home"
    gone.mkdir()
    home.mkdir()
    script = f'cd "{gone}" && rmdir "{gone}" && exec "{sys.executable}" -c "$0" "$@"'
    done = subprocess.run(
        ["sh", "-c", script, CLI, *argv],
        env={**os.environ, "LCER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    _one_error_line(
        done.returncode, done.stdout, done.stderr, "the current folder no longer exists"
    )
    assert os.listdir(home) == []


def test_explain_user_escapes_titles(
    lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.delenv("LCER_MIRROR", raising=False)
    ratings = synthetic_ratings(n_users=40, n_items=25, seed=3)
    source, items = tmp_path / "r.csv", tmp_path / "items.csv"
    source.write_text("customer,movie,stars\n" + "".join(f"{u},{i},{r}\n" for u, i, r in ratings))
    titles = {i: f"{EVIL} {i}" for i in sorted({i for _, i, _ in ratings})}
    with open(items, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("movie_id", "name"), *titles.items()])
    code, _, err = run_cli(
        ["prepare", "evil", "--from", str(source), "--user-col", "customer", "--item-col",
         "movie", "--rating-col", "stars", "--items", str(items), "--item-id-col", "movie_id",
         "--title-col", "name", "--heldout", "5"],
        capsys,
    )  # fmt: skip
    assert code == 0, err[-2000:]
    user = str(load_prepared("evil").users["raw_id"][0])
    argv = ["explain", "evil", "--user", user, "--k", "3", "--steps", "20", "--epochs", "2"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err[-3000:]
    _assert_inert(out)
    assert SHOWN in out and out.count("\n") >= 4
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err[-3000:]
    _assert_inert(out)
    assert {r["title"] for r in json.loads(out)["recommendations"]} <= set(titles.values())
