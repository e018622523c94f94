"""Hostile input to `lcer prepare --from` and the environment (issue 15, "Input handling").

Each case runs the real ``lcer`` command in a subprocess. A refused input ends with exit
status 2 and one ``error:`` line, and leaves the whole LCER_HOME byte for byte as it was; an
accepted one prepares exactly the data that the plain file gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from home_digest import tree_digest

LCER = str(Path(sys.executable).with_name("lcer"))
HEADER = "customer,movie,stars"
ROWS = [(u, (u * 7 + j * 5) % 60, 5) for u in range(300) for j in range(12)]
GOOD = HEADER + "\n" + "".join(f"{u},{i},{r}\n" for u, i, r in ROWS)
BYO = ["--user-col", "customer", "--item-col", "movie", "--heldout", "5"]


def lcer(
    argv: list[str], home: Path | None, *, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lcer`` with ``LCER_HOME=home`` (unset if None)."""
    full = {k: v for k, v in os.environ.items() if k not in ("LCER_HOME", "MLFLOW_TRACKING_URI")}
    if home is not None:
        full["LCER_HOME"] = str(home)
    full |= env or {}
    return subprocess.run(
        [LCER, *argv], capture_output=True, text=True, env=full, cwd=cwd, timeout=300
    )


def assert_refused(proc: subprocess.CompletedProcess[str], needle: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``error:`` line holding ``needle``."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def _refused_unchanged(home: Path, argv: list[str], needle: str) -> None:
    before = tree_digest(home)
    assert_refused(lcer(argv, home), needle)
    assert tree_digest(home) == before


# --------------------------------------------------------------------------- refused


def _parquet(path: Path, frame: pl.DataFrame) -> Path:
    frame.write_parquet(path)
    return path


def test_uint64_ids_beyond_int64_are_refused_in_one_line(home: Path, tmp_path: Path) -> None:
    users = [u for u, _, _ in ROWS]
    users[40] = 2**63  # fits UInt64, not the Int64 every id becomes
    frame = pl.DataFrame(
        {
            "customer": pl.Series(users, dtype=pl.UInt64),
            "movie": [i for _, i, _ in ROWS],
            "stars": [r for _, _, r in ROWS],
        }
    )
    path = _parquet(tmp_path / "big.parquet", frame)
    _refused_unchanged(
        home,
        ["prepare", "byo", "--from", str(path), *BYO],
        f"big.parquet row 41: column 'customer' holds id {2**63}, beyond the largest id",
    )


def test_list_typed_id_column_is_refused_in_one_line(home: Path, tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"customer": [[u] for u, _, _ in ROWS], "movie": [i for _, i, _ in ROWS]},
    )
    path = _parquet(tmp_path / "lists.parquet", frame)
    _refused_unchanged(
        home,
        ["prepare", "byo", "--from", str(path), *BYO],
        "lists.parquet: column 'customer' must hold integer ids, got a column of type List",
    )


def test_dataset_name_with_a_trailing_newline_is_refused(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "good.csv"
    path.write_text(GOOD)
    _refused_unchanged(
        home, ["prepare", "byo\n", "--from", str(path), *BYO], "invalid dataset name 'byo\\n'"
    )
    assert list(home.iterdir()) == []


def test_csv_line_number_counts_quoted_line_breaks(home: Path, tmp_path: Path) -> None:
    text = (
        "customer,movie,stars,note\n"
        '1,2,5,"a note\nover two lines"\n'  # lines 2-3
        '1,3,5,"and\none\nmore"\n'  # lines 4-6
        "bob,4,5,x\n"  # line 7
    )
    path = tmp_path / "notes.csv"
    path.write_text(text)
    _refused_unchanged(
        home,
        ["prepare", "byo", "--from", str(path), *BYO],
        "notes.csv line 7: column 'customer' must hold integer ids, got 'bob'",
    )


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_non_finite_rating_is_refused(home: Path, tmp_path: Path, value: str) -> None:
    path = tmp_path / "r.csv"
    path.write_text(GOOD.replace(",5\n", f",{value}\n", 3))
    _refused_unchanged(
        home,
        ["prepare", "byo", "--from", str(path), *BYO, "--rating-col", "stars"],
        f"r.csv line 2: column 'stars' must be a finite number, got '{value}'",
    )


def test_duplicated_header_column_is_refused(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("customer,movie,movie\n" + "".join(f"{u},{i},7\n" for u, i, _ in ROWS))
    _refused_unchanged(
        home,
        ["prepare", "byo", "--from", str(path), *BYO],
        "dup.csv line 1: column 'movie' appears twice in the header",
    )


def test_deleted_current_folder_without_lcer_home_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    before = tree_digest(tmp_path)
    proc = subprocess.run(
        ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "{LCER}" stats ml-100k --json'],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "LCER_HOME"},
        timeout=120,
    )
    assert_refused(proc, "the current folder no longer exists")
    del before["gone"]
    assert tree_digest(tmp_path) == before


def test_lcer_home_symlink_loop_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    before = tree_digest(tmp_path)
    for argv in (["stats", "ml-100k", "--json"], ["prepare", "ml-100k"], ["sql", "select 1"]):
        assert_refused(lcer(argv, tmp_path / "a"), f"cannot use LCER_HOME '{tmp_path / 'a'}'")
    assert tree_digest(tmp_path) == before


# --------------------------------------------------------------------------- accepted


def _fingerprint(home: Path, name: str) -> str:
    proc = lcer(["stats", name, "--json"], home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["fingerprint"]


def test_csv_variants_prepare_the_same_data(home: Path, tmp_path: Path) -> None:
    """One blank line at the end, CR-only line ends, a .tsv with tabs and ``1.0`` ids (from
    text and from a Parquet float column) all give the data of the plain file."""
    variants = {
        "plain.csv": GOOD.encode(),
        "blank_end.csv": (GOOD + "\n").encode(),
        "cr_only.csv": GOOD.replace("\n", "\r").encode(),
        "crlf.csv": GOOD.replace("\n", "\r\n").encode(),
        "tabs.tsv": GOOD.replace(",", "\t").encode(),
        "float_ids.csv": (HEADER + "\n" + "".join(f"{u}.0,{i},{r}\n" for u, i, r in ROWS)).encode(),
    }
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
    floats = pl.DataFrame(
        {
            "customer": [float(u) for u, _, _ in ROWS],
            "movie": [float(i) for _, i, _ in ROWS],
            "stars": [r for _, _, r in ROWS],
        }
    )
    names = [*variants, _parquet(tmp_path / "float_ids.parquet", floats).name]
    prints = {}
    for i, name in enumerate(names):
        proc = lcer(["prepare", f"byo{i}", "--from", str(tmp_path / name), *BYO], home)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        prints[name] = _fingerprint(home, f"byo{i}")
    assert set(prints.values()) == {prints["plain.csv"]}, prints


def test_titles_with_control_characters_are_printed_escaped(home: Path, tmp_path: Path) -> None:
    ratings, items = tmp_path / "r.csv", tmp_path / "items.csv"
    ratings.write_text(GOOD)
    items.write_text(
        "movie,title\n"
        + "".join(f'{i},"Film {i}\x1b[2J\x1b]0;owned\x07\x9b31m"\n' for i in range(60))
    )
    proc = lcer(["prepare", "byo", "--from", str(ratings), *BYO, "--items", str(items)], home)
    assert proc.returncode == 0, proc.stderr
    script = (
        "from lcer_core import models; from lcer_core.datasets import load_prepared;"
        "from lcer_core.recommender.multvae import MultVAEConfig as C;"
        "d = load_prepared('byo');"
        "models.train_model(d, C(hidden=16, latent=8, epochs=1), seed=0, device='cpu');"
        "print(d.users.filter(d.users['split'] == 'test')['raw_id'][0])"
    )
    env = os.environ | {"LCER_HOME": str(home)}
    test_user = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    ).stdout.strip()
    proc = lcer(["explain", "byo", "--user", test_user, "--k", "2", "--steps", "5"], home)
    assert proc.returncode == 0, proc.stderr
    assert "Film" in proc.stdout
    assert not any(c in proc.stdout for c in "\x1b\x07\x9b"), repr(proc.stdout)
    assert "\\x1b[2J" in proc.stdout and "\\x07" in proc.stdout and "\\x9b31m" in proc.stdout
