"""Bring your own interactions (issue 10): ``lcer prepare NAME --from FILE ...``.

The decisive check: ML 100K's ``u.data`` rewritten as a CSV with a header and other column
names (and its titles as a separate file) prepares into exactly the same data as the
built-in ``ml-100k``, for the same seed.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import polars as pl
import pytest
from dataset_fixtures import files_under, reference_table1, run_cli, synthetic_ratings

from lcer_core.datasets import get_spec, known_datasets, load_prepared
from lcer_core.errors import ChecksumMismatchError, UnknownDatasetError

PARTS = ("train", "val_tr", "val_te", "test_tr", "test_te")
ARGS = ["--user-col", "customer", "--item-col", "movie", "--rating-col", "stars"]


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LCER_MIRROR", raising=False)


@pytest.fixture(scope="module")
def ml100k_as_csv(
    tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path
) -> tuple[Path, Path]:
    """``u.data`` as ``customer,movie,stars,when`` and ``u.item`` as ``movie_id,name,tags``."""
    folder = tmp_path_factory.mktemp("byo")
    with zipfile.ZipFile(shared_datasets / "ml-100k.zip") as zf:
        udata = zf.read("ml-100k/u.data").decode()
        uitem = zf.read("ml-100k/u.item").decode("latin-1")
        genres = [
            line.split("|")[0] for line in zf.read("ml-100k/u.genre").decode().splitlines() if line
        ]
    ratings = folder / "ratings.csv"
    with open(ratings, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer", "movie", "stars", "when"])
        w.writerows(line.split("\t") for line in udata.splitlines())
    items = folder / "items.csv"
    with open(items, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["movie_id", "name", "tags"])
        for line in uitem.splitlines():
            f = line.split("|")
            tags = "|".join(g for g, flag in zip(genres, f[5:], strict=True) if flag == "1")
            w.writerow([f[0], f[1], tags])
    return ratings, items


def _byo_args(name: str, ratings: Path, items: Path) -> list[str]:
    return ["prepare", name, "--from", str(ratings), *ARGS, "--items", str(items)] + [
        "--item-id-col",
        "movie_id",
        "--title-col",
        "name",
        "--genres-col",
        "tags",
    ]


def test_ml100k_as_csv_equals_builtin(
    lcer_home: Path,
    shared_datasets: Path,
    ml100k_as_csv: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ratings, items = ml100k_as_csv
    monkeypatch.setenv("LCER_MIRROR", shared_datasets.as_uri())
    assert run_cli(["prepare", "ml-100k"], capsys)[0] == 0
    monkeypatch.delenv("LCER_MIRROR")
    code, out, err = run_cli(_byo_args("mylens", ratings, items), capsys)
    assert code == 0, err
    assert "938 users, 1,447 items, 55,361 interactions, density 4.079 %" in out

    builtin, mine = load_prepared("ml-100k"), load_prepared("mylens")
    for part in PARTS:
        assert mine.part(part).equals(builtin.part(part)), part
    assert mine.users.equals(builtin.users)
    assert mine.items.equals(builtin.items)
    assert mine.fingerprint == builtin.fingerprint
    assert {k: v for k, v in mine.stats.items() if k != "dataset"} == {
        k: v for k, v in builtin.stats.items() if k != "dataset"
    }
    assert mine.titles([mine.sid_of("50")]) == ["Star Wars (1977)"]

    # registered: every command accepts the name; the data lives under LCER_HOME
    assert "mylens" in known_datasets() and get_spec("mylens").raw_format == "custom"
    source = json.loads((lcer_home / "data" / "mylens" / "source.json").read_text())
    assert (
        source["user_col"] == "customer"
        and source["threshold"] == 3.5
        and source["heldout_users"] == 100
    )
    assert (
        lcer_home / "data" / "mylens" / "raw" / "ratings.csv"
    ).read_bytes() == ratings.read_bytes()
    code, out, _ = run_cli(["stats", "mylens", "--json"], capsys)
    stats = json.loads(out)
    assert code == 0 and (
        stats["dataset"],
        stats["users"],
        stats["items"],
        stats["interactions"],
    ) == (
        "mylens",
        938,
        1447,
        55_361,
    )
    # the same registration again does nothing
    code, _, err = run_cli(_byo_args("mylens", ratings, items), capsys)
    assert code == 0 and "nothing to do" in err
    with pytest.raises(UnknownDatasetError, match=r"registered: mylens"):
        get_spec("yourlens")

    # Same data, same seed: the same model and the same explanations as the built-in dataset.
    import torch

    from lcer_core import models
    from lcer_core.explainers import get_explainer
    from lcer_core.pairs import make_pairs, test_users
    from lcer_core.recommender.multvae import MultVAEConfig

    answers = []
    for name in ("ml-100k", "mylens"):
        data = load_prepared(name)
        model = models.train_model(data, MultVAEConfig(epochs=2), seed=3, device="cpu")
        rec = model.recommender("cpu")
        pairs = make_pairs(rec, data, test_users(data, 2), 5)
        expl = get_explainer("lcer", steps=60).explain(rec, pairs, seed=1)
        answers.append((model.key, pairs.targets, expl.removed))
    assert answers[0][0] == answers[1][0]
    assert torch.equal(answers[0][1], answers[1][1]) and torch.equal(answers[0][2], answers[1][2])


def test_parquet_source_without_titles(
    lcer_home: Path,
    shared_datasets: Path,
    ml100k_as_csv: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ratings, _ = ml100k_as_csv
    pq = tmp_path / "ratings.parquet"
    pl.read_csv(ratings).write_parquet(pq)  # typed Int64 columns this time
    code, out, err = run_cli(
        ["prepare", "pqlens", "--from", str(pq), *ARGS, "--seed", "7", "--heldout", "50"], capsys
    )
    assert code == 0, err
    data = load_prepared("pqlens")
    assert (data.stats["users"], data.stats["items"], data.stats["interactions"]) == (
        938,
        1447,
        55_361,
    )
    assert (data.stats["val_users"], data.stats["test_users"], data.meta["seed"]) == (50, 50, 7)
    assert data.items["title"].null_count() == data.n_items
    assert data.titles([0]) == [data.items["raw_id"][0]]  # falls back to the raw id


def test_implicit_feedback_keeps_every_row(
    lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ratings = synthetic_ratings(n_users=50, n_items=30, seed=11)
    path = tmp_path / "clicks.csv"
    path.write_text("who;what\n" + "".join(f"{u};{i}\n" for u, i, _ in ratings))
    code, _, err = run_cli(
        [
            "prepare",
            "clicks",
            "--from",
            str(path),
            "--user-col",
            "who",
            "--item-col",
            "what",
            "--sep",
            ";",
            "--heldout",
            "3",
        ],
        capsys,
    )
    assert code == 0, err
    ref = reference_table1(ratings, threshold=None)
    stats = load_prepared("clicks").stats
    assert (stats["users"], stats["items"], stats["interactions"]) == (
        ref["users"],
        ref["items"],
        ref["interactions"],
    )
    assert (
        json.loads((lcer_home / "data" / "clicks" / "source.json").read_text())["threshold"] is None
    )


def test_reregister_needs_force_and_copy_is_self_contained(
    lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tmp_path / "a.csv"
    a.write_text("u,i,r\n" + "".join(f"{u},{i},{r}\n" for u, i, r in synthetic_ratings(seed=21)))
    b = tmp_path / "b.csv"
    b.write_text("u,i,r\n" + "".join(f"{u},{i},{r}\n" for u, i, r in synthetic_ratings(seed=22)))
    args = ["--user-col", "u", "--item-col", "i", "--rating-col", "r", "--heldout", "3"]
    assert run_cli(["prepare", "mine", "--from", str(a), *args], capsys)[0] == 0
    before = load_prepared("mine").fingerprint
    code, _, err = run_cli(["prepare", "mine", "--from", str(b), *args], capsys)
    assert code == 2 and "already registered from" in err and "--force" in err
    assert load_prepared("mine").fingerprint == before
    code, _, err = run_cli(["prepare", "mine", "--from", str(b), *args, "--force"], capsys)
    assert code == 0, err
    assert load_prepared("mine").fingerprint != before
    assert sorted(p.name for p in (lcer_home / "data" / "mine" / "raw").iterdir()) == ["b.csv"]
    # the copy makes it self-contained: prepare again without the original file
    b.unlink()
    code, _, err = run_cli(["prepare", "mine", "--force"], capsys)
    assert code == 0, err
    # a tampered copy is caught by its digest
    copy = lcer_home / "data" / "mine" / "raw" / "b.csv"
    copy.write_text(copy.read_text().replace(",5.0\n", ",1.0\n", 1))
    code, _, err = run_cli(["prepare", "mine", "--force"], capsys)
    assert code == 2 and "checksum mismatch for b.csv" in err
    with pytest.raises(ChecksumMismatchError):
        from lcer_core.datasets import prepare_dataset

        prepare_dataset("mine", force=True)


GOOD = "customer,movie,stars,when\n" + "".join(
    f"{u},{i},{r},0\n" for u, i, r in synthetic_ratings(n_users=40, seed=31)
)


def _bad(content: str | bytes, name: str = "r.csv"):
    return (name, content)


CASES = {
    "missing column": (
        _bad(GOOD),
        ["--user-col", "user_id", "--item-col", "movie"],
        "column 'user_id' (--user-col) not found in r.csv; available columns: customer, movie, stars, when",
    ),
    "non-numeric rating": (
        _bad("customer,movie,stars,when\n1,2,5,0\n1,3,five,0\n"),
        ARGS,
        "r.csv line 3: column 'stars' must be numeric, got 'five'",
    ),
    "non-numeric id": (
        _bad("customer,movie,stars,when\n1,2,5,0\nbob,3,4,0\n"),
        ARGS,
        "r.csv line 3: column 'customer' must hold integer ids, got 'bob'",
    ),
    "empty id": (
        _bad("customer,movie,stars,when\n1,,5,0\n"),
        ARGS,
        "r.csv line 2: empty id in column 'movie'",
    ),
    "empty file": (_bad(""), ARGS, "r.csv is empty"),
    "header only": (_bad("customer,movie,stars,when\n"), ARGS, "r.csv has no rows"),
    "ragged line": (
        _bad("customer,movie,stars,when\n1,2,5,0\n1,3,4,0,9\n"),
        ARGS,
        "r.csv is not valid CSV: line 3 has 5 fields, the header 4",
    ),
    "unsupported type": (
        _bad(GOOD, "r.xlsx"),
        ARGS,
        "unsupported file type 'r.xlsx': use .csv or .parquet",
    ),
    "no user left": (
        _bad(
            "customer,movie,stars,when\n"
            + "".join(f"{u},{i},3,0\n" for u in range(9) for i in range(9))
        ),
        ARGS,
        "no user left after filtering (ratings > 3.5",
    ),
    "too few users": (_bad(GOOD), ARGS, "too few to hold out 100 validation and 100 test users"),
    "threshold without ratings": (
        _bad(GOOD),
        ["--user-col", "customer", "--item-col", "movie", "--threshold", "4"],
        "--threshold needs --rating-col",
    ),
    "from without item col": (_bad(GOOD), ["--user-col", "customer"], "--from needs --item-col"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_custom_file_one_line_nothing_left(
    case: str, lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (name, content), args, message = CASES[case]
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    code, out, err = run_cli(["prepare", "byo", "--from", str(path), *args], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert message in lines[0], lines[0]
    assert files_under(lcer_home / "data") == []
    assert "byo" not in known_datasets()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prepare", "ml-100k", "--from", "{file}", *ARGS], "'ml-100k' is a built-in dataset"),
        (["prepare", "../evil", "--from", "{file}", *ARGS], "invalid dataset name '../evil'"),
        (["prepare", "byo", "--from", "{missing}", *ARGS], "file not found"),
        (
            ["prepare", "ml-100k", "--user-col", "customer"],
            "--user-col only apply with --from FILE",
        ),
        (
            [
                "prepare",
                "byo",
                "--from",
                "{file}",
                *ARGS,
                "--items",
                "{file}",
                "--title-col",
                "nope",
            ],
            "column 'nope' (--title-col) not found in r.csv",
        ),
        (
            [
                "prepare",
                "byo",
                "--from",
                "{file}",
                *ARGS,
                "--items",
                "{dup}",
                "--item-id-col",
                "id",
            ],
            "items.csv line 4: item id 2 is listed twice",
        ),
    ],
)
def test_bad_options_one_line_nothing_left(
    argv: list[str],
    message: str,
    lcer_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "r.csv").write_text(GOOD)
    (tmp_path / "items.csv").write_text("id,title\n1,One\n2,Two\n2,Again\n")
    subst = {
        "{file}": str(tmp_path / "r.csv"),
        "{missing}": str(tmp_path / "nope.csv"),
        "{dup}": str(tmp_path / "items.csv"),
    }
    code, out, err = run_cli([subst.get(a, a) for a in argv], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert files_under(lcer_home / "data") == []
