"""The dataset layer: registry, parsers, the Mult-VAE protocol, ``lcer prepare`` / ``lcer stats``.

ML 100K comes from the shared mirror over a real loopback HTTP server; ML 1M, Epinions and
Alishop from small archives written here in exactly their raw formats and served the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import serve_directory
from dataset_fixtures import (
    bz2_garbage,
    closed_port_url,
    files_under,
    ml100k_members,
    reference_table1,
    run_cli,
    synthetic_ratings,
    truncated,
    write_alishop,
    write_epinions,
    write_ml1m,
    write_zip,
)

from lcer_core.datasets import (
    get_spec,
    is_prepared,
    known_datasets,
    load_prepared,
    prepare,
    prepare_dataset,
)
from lcer_core.datasets import parse as P
from lcer_core.datasets.prepare import fingerprint
from lcer_core.datasets.preprocess import SplitResult
from lcer_core.errors import DataFormatError, InvalidParameterError, UnknownDatasetError

PARTS = ("train", "val_tr", "val_te", "test_tr", "test_te")


@pytest.fixture(autouse=True)
def _fast_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LCER_DOWNLOAD_BACKOFF", "0")
    monkeypatch.setenv("LCER_DOWNLOAD_ATTEMPTS", "2")
    monkeypatch.setenv("LCER_DOWNLOAD_TIMEOUT", "10")
    monkeypatch.delenv("LCER_MIRROR", raising=False)


@pytest.fixture()
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder of fixture archives, served over loopback HTTP and set as LCER_MIRROR."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server, url = serve_directory(folder)
    monkeypatch.setenv("LCER_MIRROR", url)
    yield folder
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def ml100k_home(tmp_path_factory: pytest.TempPathFactory, http_mirror: str) -> Path:
    """One LCER_HOME with ML 100K prepared from the HTTP mirror (default seed), shared by the module."""
    home = tmp_path_factory.mktemp("ml100k-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCER_HOME", str(home))
        mp.setenv("LCER_MIRROR", http_mirror)
        prepare("ml-100k")
    return home


def _stats(capsys: pytest.CaptureFixture[str], name: str) -> dict:
    code, out, err = run_cli(["stats", name, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


# --------------------------------------------------------------------------- registry


def test_registry_holds_the_four_datasets_of_the_paper() -> None:
    assert known_datasets()[:4] == ["ml-100k", "ml-1m", "alishop", "epinions"]
    heldout = {n: get_spec(n).heldout_users for n in ("ml-100k", "ml-1m", "alishop", "epinions")}
    assert heldout == {"ml-100k": 100, "ml-1m": 500, "alishop": 2000, "epinions": 2000}
    assert get_spec("alishop").threshold is None and get_spec("alishop").manual
    assert all(get_spec(n).threshold == 3.5 for n in ("ml-100k", "ml-1m", "epinions"))
    assert get_spec("epinions").archive == "ratings_data.txt.bz2"
    ml = get_spec("ml-100k")
    assert ml.checksums["u.data"].startswith("06416e59") and ml.checksums["u.item"].startswith(
        "553841eb"
    )
    assert ml.table1 is not None and (ml.table1.users, ml.table1.items) == (938, 1447)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ml.threshold = 4.0  # type: ignore[misc]


def test_unknown_dataset_lists_the_known_ones(lcer_home: Path) -> None:
    with pytest.raises(UnknownDatasetError) as exc:
        get_spec("ml-20m")
    msg = str(exc.value)
    assert "'ml-20m'" in msg and all(n in msg for n in ("ml-100k", "ml-1m", "alishop", "epinions"))


# --------------------------------------------------------------------------- parsers


def test_ml100k_item_parser_joins_genre_flags_and_reads_latin1() -> None:
    flags = ["0"] * 19
    flags[3] = flags[4] = flags[5] = "1"  # Animation, Children's, Comedy
    line1 = "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags)
    line2 = "2|Café (1990)|01-Jan-1990||http://y|" + "|".join(["0"] * 19)
    df = P.parse_ml100k_items(f"{line1}\r\n{line2}\r\n".encode("latin-1"))
    assert df.rows() == [
        (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
        (2, "Café (1990)", None),
    ]


def test_malformed_lines_name_the_file_and_the_line() -> None:
    with pytest.raises(DataFormatError, match=r"^u\.data line 3: expected"):
        P.parse_ml100k_ratings(b"1\t2\t5\t0\n\n1\t2\t5\n")  # blank line 2 is skipped, still counted
    with pytest.raises(DataFormatError, match=r"^x\.dat line 2: rating 'five' is not a number"):
        P.parse_ml1m_ratings(b"1::2::5::0\n1::3::five::0\n", "x.dat")
    with pytest.raises(
        DataFormatError, match=r"ratings_data\.txt line 1: user 'u1' is not an integer"
    ):
        P.parse_epinions_ratings(b"u1 2 5\n")
    with pytest.raises(DataFormatError, match=r"train\.csv line 1: expected the header 'uid,sid'"):
        P.parse_uid_sid_csv(b"0,1\n", "train.csv")
    with pytest.raises(DataFormatError, match=r"unique_sid\.txt line 3: item '7' listed twice"):
        P.parse_unique_sid(b"7\n8\n7\n")
    with pytest.raises(DataFormatError, match=r"movies\.dat line 1"):
        P.parse_ml1m_movies(b"1|Toy Story|Comedy\n")


def test_parsers_read_the_published_layouts() -> None:
    assert P.parse_ml1m_ratings(b"1::1193::5::978300760\r\n").rows() == [(1, 1193, 5.0)]
    movies = P.parse_ml1m_movies("2::Jumanji: Part 1 (1995)::Adventure|Fantasy\n".encode("latin-1"))
    assert movies.rows() == [(2, "Jumanji: Part 1 (1995)", "Adventure|Fantasy")]
    assert P.parse_epinions_ratings(b"1 100 5\n2 7 3\n").rows() == [(1, 100, 5.0), (2, 7, 3.0)]
    assert P.parse_uid_sid_csv(b"uid,sid\n0,3\n", "t.csv").select("uid", "sid").rows() == [(0, 3)]
    assert P.parse_item_cate(b"1001,7\n1002,3\n").rows() == [("1001", "7"), ("1002", "3")]


# --------------------------------------------------------------------------- ML 100K from the mirror


def test_ml100k_table1_over_http_mirror_and_second_prepare_does_nothing(
    lcer_home: Path,
    http_mirror: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LCER_MIRROR", http_mirror)
    stats = _stats(capsys, "ml-100k")  # stats prepares first when needed
    assert (stats["users"], stats["items"], stats["interactions"]) == (938, 1447, 55_361)
    assert round(stats["density_pct"], 3) == 4.079
    assert stats["density_pct"] == pytest.approx(100 * 55_361 / (938 * 1447), rel=1e-12)
    assert (stats["train_users"], stats["val_users"], stats["test_users"]) == (738, 100, 100)
    folder = lcer_home / "data" / "ml-100k"
    mtimes = {p: p.stat().st_mtime_ns for p in files_under(folder)}
    assert (folder / "raw" / "ml-100k.zip").is_file() and not list(folder.rglob("*.part"))

    code, out, err = run_cli(["prepare", "ml-100k"], capsys)
    assert code == 0 and "nothing to do" in err
    assert "938 users, 1,447 items, 55,361 interactions, density 4.079 %" in out
    assert {p: p.stat().st_mtime_ns for p in files_under(folder)} == mtimes


def test_ml100k_matches_the_reference_notebook(
    ml100k_home: Path, shared_datasets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split equals the Mult-VAE notebook's pandas code, run here verbatim on u.data."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    import io
    import zipfile

    with zipfile.ZipFile(shared_datasets / "ml-100k.zip") as zf:
        raw = pd.read_csv(
            io.BytesIO(zf.read("ml-100k/u.data")),
            sep="\t",
            header=None,
            names=["userId", "movieId", "rating", "ts"],
        )
    raw = raw[raw["rating"] > 3.5]
    count = raw[["userId"]].groupby("userId").size()
    raw = raw[raw["userId"].isin(count.index[count >= 5])]
    unique_uid = raw[["userId"]].groupby("userId").size().index
    np.random.seed(98765)
    unique_uid = unique_uid[np.random.permutation(unique_uid.size)]
    n, nh = unique_uid.size, 100
    tr_users, vd_users, te_users = (
        unique_uid[: n - 2 * nh],
        unique_uid[n - 2 * nh : n - nh],
        unique_uid[n - nh :],
    )
    train = raw.loc[raw["userId"].isin(tr_users)]
    unique_sid = pd.unique(train["movieId"])
    show2id = {s: i for i, s in enumerate(unique_sid)}
    profile2id = {p: i for i, p in enumerate(unique_uid)}

    def split(data):
        tr, te = [], []
        np.random.seed(98765)
        for _, group in data.groupby("userId"):
            k = len(group)
            if k >= 5:
                idx = np.zeros(k, dtype="bool")
                idx[np.random.choice(k, size=int(0.2 * k), replace=False).astype("int64")] = True
                tr.append(group[np.logical_not(idx)])
                te.append(group[idx])
            else:
                tr.append(group)
        return pd.concat(tr), pd.concat(te)

    def numerize(tp):
        return pl.DataFrame(
            {
                "uid": [profile2id[x] for x in tp["userId"]],
                "sid": [show2id[x] for x in tp["movieId"]],
            },
            schema={"uid": pl.Int64, "sid": pl.Int64},
        ).sort("uid", "sid")

    vad = raw.loc[raw["userId"].isin(vd_users) & raw["movieId"].isin(unique_sid)]
    tst = raw.loc[raw["userId"].isin(te_users) & raw["movieId"].isin(unique_sid)]
    ref = dict(zip(PARTS, [train, *split(vad), *split(tst)], strict=True))

    monkeypatch.setenv("LCER_HOME", str(ml100k_home))
    data = load_prepared("ml-100k")
    for part in PARTS:
        assert data.part(part).equals(numerize(ref[part])), part
    assert data.users.sort("uid")["raw_id"].to_list() == [str(u) for u in unique_uid]
    assert data.items.sort("sid")["raw_id"].to_list() == [str(s) for s in unique_sid]


def test_ml100k_prepared_layout_and_invariants(
    ml100k_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LCER_HOME", str(ml100k_home))
    assert is_prepared("ml-100k")
    data = load_prepared("ml-100k")
    folder = ml100k_home / "data" / "ml-100k"
    assert data.folder == folder / (folder / "current").read_text().strip()
    meta = json.loads((data.folder / "meta.json").read_text())
    assert meta["dataset"] == "ml-100k" and meta["seed"] == 98765
    for part in PARTS:
        assert data.part(part).schema == pl.Schema({"uid": pl.Int64, "sid": pl.Int64})
    assert data.users.columns == ["uid", "raw_id", "split"]
    assert data.items.columns == ["sid", "raw_id", "title", "genres", "popularity"]
    # users: disjoint splits, numbered train then val then test
    split_of = dict(zip(data.users["uid"].to_list(), data.users["split"].to_list(), strict=True))
    assert data.users["uid"].to_list() == list(range(938))
    assert [split_of[u] for u in (0, 737, 738, 837, 838, 937)] == [
        "train",
        "train",
        "val",
        "val",
        "test",
        "test",
    ]
    for part in PARTS:
        want = {
            "train": "train",
            "val_tr": "val",
            "val_te": "val",
            "test_tr": "test",
            "test_te": "test",
        }[part]
        assert {split_of[u] for u in data.part(part)["uid"].unique().to_list()} <= {want}
    # items: exactly those of the training users, sids 0..M-1, popularity = interactions
    assert data.items["sid"].to_list() == list(range(data.n_items))
    assert set(data.part("train")["sid"].unique().to_list()) == set(range(data.n_items))
    every = pl.concat([data.part(p) for p in PARTS])
    counts = dict(every.group_by("sid").len().iter_rows())
    assert data.items["popularity"].to_list() == [counts.get(s, 0) for s in range(data.n_items)]
    # fold-in / held-out: 20 % of each held-out user's items (floor), disjoint
    tr = data.part("val_tr").group_by("uid").len()
    te = dict(data.part("val_te").group_by("uid").len().iter_rows())
    for uid, n_tr in tr.iter_rows():
        n = n_tr + te.get(uid, 0)
        assert te.get(uid, 0) == (int(0.2 * n) if n >= 5 else 0)
    assert data.part("val_tr").join(data.part("val_te"), on=["uid", "sid"]).height == 0
    # metadata and id maps
    toy = data.sid_of("1")
    assert data.titles([toy]) == ["Toy Story (1995)"]
    assert data.items.filter(pl.col("sid") == toy)["genres"][0] == "Animation|Children's|Comedy"
    assert data.users.filter(pl.col("uid") == data.uid_of("196"))["raw_id"][0] == "196"
    # fingerprint is the content hash
    res = SplitResult(
        parts={p: data.part(p) for p in PARTS}, users=data.users, items=data.items, stats={}
    )
    assert data.fingerprint == fingerprint(res)


def test_another_seed_reprepares_same_table1_other_split(
    ml100k_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home2"
    raw = home / "data" / "ml-100k" / "raw"
    raw.mkdir(parents=True)
    (raw / "ml-100k.zip").write_bytes(
        (ml100k_home / "data" / "ml-100k" / "raw" / "ml-100k.zip").read_bytes()
    )
    monkeypatch.setenv("LCER_HOME", str(home))  # no mirror: the archive already there is used
    first = prepare_dataset("ml-100k", seed=1)
    assert first.did_work
    again = prepare_dataset("ml-100k", seed=1)
    assert not again.did_work
    other = load_prepared("ml-100k")
    monkeypatch.setenv("LCER_HOME", str(ml100k_home))
    base = load_prepared("ml-100k")
    keys = ("users", "items", "interactions", "density_pct")
    assert {k: other.stats[k] for k in keys} == {k: base.stats[k] for k in keys}
    assert other.meta["seed"] == 1 and other.fingerprint != base.fingerprint


# --------------------------------------------------------------------------- the other datasets, on fixtures

MOVIES = {10 + 3 * i: (f"Movie {i} (199{i % 10})", "Drama") for i in range(40)}
MOVIES[10] = ("Café au lait (1993)", "Comedy|Romance")
MOVIES[13] = ("Toy Story (1995)", "Animation|Children's|Comedy")


def _check_against_reference(name: str, ratings, heldout: int, stats: dict) -> None:
    ref = reference_table1(ratings)
    assert {k: stats[k] for k in ("users", "items", "interactions")} == {
        k: ref[k] for k in ("users", "items", "interactions")
    }
    assert stats["density_pct"] == pytest.approx(ref["density_pct"], rel=1e-12)
    assert stats["val_users"] == stats["test_users"] == heldout
    assert stats["train_users"] == ref["users"] - 2 * heldout
    data = load_prepared(name)
    raw_of_uid = dict(zip(data.users["uid"].to_list(), data.users["raw_id"].to_list(), strict=True))
    raw_of_sid = dict(zip(data.items["sid"].to_list(), data.items["raw_id"].to_list(), strict=True))
    kept = {(str(u), str(i)) for u, i in ref["kept"]}
    for part in PARTS:  # every prepared interaction is a kept rating of the raw file
        pairs = {(raw_of_uid[u], raw_of_sid[s]) for u, s in data.part(part).iter_rows()}
        assert pairs <= kept
    train_pairs = {(raw_of_uid[u], raw_of_sid[s]) for u, s in data.part("train").iter_rows()}
    train_users = {raw_of_uid[u] for u in data.users_of("train")}
    assert train_pairs == {p for p in kept if p[0] in train_users}


def test_ml1m_fixture_prepares_through_the_mirror(
    lcer_home: Path, mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ratings = synthetic_ratings(n_users=60, n_items=40, seed=1)
    write_ml1m(mirror, ratings, MOVIES)
    code, out, err = run_cli(["prepare", "ml-1m", "--heldout", "5"], capsys)
    assert code == 0, err
    stats = _stats(capsys, "ml-1m")
    _check_against_reference("ml-1m", ratings, 5, stats)
    data = load_prepared("ml-1m")
    titled = dict(zip(data.items["raw_id"].to_list(), data.items["title"].to_list(), strict=True))
    if "10" in titled:
        assert titled["10"] == "Café au lait (1993)"
    genres = dict(zip(data.items["raw_id"].to_list(), data.items["genres"].to_list(), strict=True))
    if "13" in genres:
        assert genres["13"] == "Animation|Children's|Comedy"
    assert data.items["title"].null_count() == 0


def test_epinions_fixture_prepares_through_the_mirror(lcer_home: Path, mirror: Path) -> None:
    ratings = synthetic_ratings(n_users=80, n_items=50, seed=2, raw_offset=1000)
    write_epinions(mirror, ratings)
    result = prepare_dataset("epinions", heldout=4)
    assert result.did_work
    _check_against_reference("epinions", ratings, 4, load_prepared("epinions").stats)
    assert (lcer_home / "data" / "epinions" / "raw" / "ratings_data.txt.bz2").is_file()
    assert not prepare_dataset("epinions", heldout=4).did_work
    with pytest.raises(InvalidParameterError, match="pass --force"):  # settings are its identity
        prepare_dataset("epinions", heldout=3)
    assert prepare_dataset("epinions", heldout=3, force=True).did_work  # another split
    assert not prepare_dataset("epinions").did_work  # the stored settings, not the defaults


def _alishop_split() -> tuple[dict[str, list[tuple[int, int]]], list[str], dict[str, str]]:
    raw_items = [str(90000 + 17 * i) for i in range(12)]
    parts: dict[str, list[tuple[int, int]]] = {p: [] for p in PARTS}
    for u in range(10):
        parts["train"] += [(u, (u + k) % 12) for k in range(6)]
    for u, part in ((10, "val"), (11, "val"), (12, "test"), (13, "test")):
        parts[f"{part}_tr"] += [(u, (u + k) % 12) for k in range(4)]
        parts[f"{part}_te"] += [(u, (u + 5) % 12)]
    cate = {raw: f"c{i % 3}" for i, raw in enumerate(raw_items)} | {
        "123": "c9"
    }  # an extra item is ignored
    return parts, raw_items, cate


def test_alishop_fixture_is_loaded_as_split(
    lcer_home: Path, mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts, raw_items, cate = _alishop_split()
    write_alishop(mirror, parts, raw_items, cate)
    stats = _stats(capsys, "alishop")
    total = sum(len(v) for v in parts.values())
    assert (stats["users"], stats["items"], stats["interactions"]) == (14, 12, total)
    assert stats["density_pct"] == pytest.approx(100 * total / (14 * 12))
    assert (stats["train_users"], stats["val_users"], stats["test_users"]) == (10, 2, 2)
    data = load_prepared("alishop")
    for p in PARTS:
        assert sorted(data.part(p).iter_rows()) == sorted(parts[p])
    assert data.items["raw_id"].to_list() == raw_items
    assert data.items["genres"].to_list() == [f"c{i % 3}" for i in range(12)]
    assert data.users_of("val") == [10, 11] and data.uid_of("12") == 12


def test_alishop_is_a_manual_download(
    lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["prepare", "alishop"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "manual download" in err and "alishop-7c.zip" in err
    assert files_under(lcer_home / "data") == []
    # put by hand where the message says: prepared without any mirror
    parts, raw_items, cate = _alishop_split()
    write_alishop(lcer_home / "data" / "alishop" / "raw", parts, raw_items, cate)
    code, out, err = run_cli(["prepare", "alishop"], capsys)
    assert code == 0 and "14 users, 12 items" in out


# --------------------------------------------------------------------------- bad input: one line, status 2, nothing left


def _assert_failed_cleanly(code: int, err: str, home: Path, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert files_under(home / "data") == []


def test_unknown_dataset_exit_2(lcer_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["prepare", "movielens"], capsys)
    _assert_failed_cleanly(
        code, err, lcer_home, "unknown dataset 'movielens'", "ml-100k, ml-1m, alishop, epinions"
    )
    code, _, err = run_cli(["stats", "movielens", "--json"], capsys)
    _assert_failed_cleanly(code, err, lcer_home, "unknown dataset")


def test_unreachable_mirror(
    lcer_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with closed_port_url() as url:
        monkeypatch.setenv("LCER_MIRROR", url)
        code, _, err = run_cli(["prepare", "ml-100k"], capsys)
    _assert_failed_cleanly(
        code, err, lcer_home, "cannot download", "after 2 attempts", "ml-100k.zip"
    )


def test_corrupt_and_truncated_archives(
    lcer_home: Path, mirror: Path, shared_datasets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (mirror / "ml-100k.zip").write_bytes(truncated((shared_datasets / "ml-100k.zip").read_bytes()))
    code, _, err = run_cli(["prepare", "ml-100k"], capsys)
    _assert_failed_cleanly(code, err, lcer_home, "ml-100k.zip is not a valid zip archive")
    (mirror / "ratings_data.txt.bz2").write_bytes(bz2_garbage())
    code, _, err = run_cli(["prepare", "epinions"], capsys)
    _assert_failed_cleanly(code, err, lcer_home, "ratings_data.txt.bz2 is not a valid bz2 archive")
    members = ml100k_members(shared_datasets)
    del members["ml-100k/u.item"]
    write_zip(mirror / "ml-100k.zip", members)
    code, _, err = run_cli(["prepare", "ml-100k"], capsys)
    _assert_failed_cleanly(code, err, lcer_home, "does not contain u.item")


def test_checksum_mismatch_names_file_and_both_digests(
    lcer_home: Path, mirror: Path, shared_datasets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members = ml100k_members(shared_datasets)
    udata = members["ml-100k/u.data"]
    members["ml-100k/u.data"] = udata.replace(b"196\t242\t3\t", b"196\t242\t5\t", 1)
    write_zip(mirror / "ml-100k.zip", members)
    import hashlib

    got = hashlib.sha256(members["ml-100k/u.data"]).hexdigest()
    code, _, err = run_cli(["prepare", "ml-100k"], capsys)
    _assert_failed_cleanly(
        code,
        err,
        lcer_home,
        "checksum mismatch for u.data",
        get_spec("ml-100k").checksums["u.data"],
        got,
    )


def test_malformed_line_names_file_and_line(
    lcer_home: Path, mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ml1m(mirror, synthetic_ratings(seed=3), MOVIES, bad_line=7)
    code, _, err = run_cli(["prepare", "ml-1m", "--heldout", "5"], capsys)
    _assert_failed_cleanly(code, err, lcer_home, "ml-1m.zip:ratings.dat line 7", "'five'")


def test_no_user_left_after_filtering(
    lcer_home: Path, mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    low = [(u, i, min(r, 3.0)) for u, i, r in synthetic_ratings(seed=4)]
    write_epinions(mirror, low)
    code, _, err = run_cli(["prepare", "epinions", "--heldout", "5"], capsys)
    _assert_failed_cleanly(code, err, lcer_home, "no user left after filtering", "ratings > 3.5")
    write_epinions(mirror, synthetic_ratings(n_users=12, seed=4))
    code, _, err = run_cli(["prepare", "epinions"], capsys)  # 2000 held-out users of ~10
    _assert_failed_cleanly(code, err, lcer_home, "too few to hold out 2000")
    code, _, err = run_cli(["prepare", "epinions", "--heldout", "0"], capsys)
    _assert_failed_cleanly(code, err, lcer_home, "--heldout must be >= 1")


def test_failed_reprepare_keeps_the_previous_data(lcer_home: Path, mirror: Path) -> None:
    write_epinions(mirror, synthetic_ratings(n_users=40, seed=5))
    prepare_dataset("epinions", heldout=3)
    before = {p.name: p.read_bytes() for p in files_under(lcer_home / "data" / "epinions")}
    with pytest.raises(Exception, match="too few"):
        prepare_dataset("epinions", heldout=400, force=True)
    after = {p.name: p.read_bytes() for p in files_under(lcer_home / "data" / "epinions")}
    assert after == before and is_prepared("epinions")


def test_installed_command_exits_2_with_one_line(lcer_home: Path) -> None:
    exe = Path(sys.executable).with_name("lcer")
    proc = subprocess.run(
        [str(exe), "stats", "no-such-data", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "LCER_HOME": str(lcer_home)},
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: unknown dataset 'no-such-data'; known datasets: ml-100k, ml-1m, alishop, epinions"
    ]
