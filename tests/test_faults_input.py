"""Bad input on every command (issue 9): exit status 2, exactly one ``error:`` line, no traceback.

One table of (command line, what the line must say). ``trained`` cases run on the shared
home with ML 100K prepared and a small Mult-VAE; ``empty`` cases on a fresh LCER_HOME, ``store``
cases on a fresh LCER_HOME holding an empty results database. The
commands of the pipeline (``lcer run``, ``sweep``, ``train``) have their own table in
``test_flows.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from dataset_fixtures import run_cli

# A valid custom dataset (300 users x 12 items, 5 stars) and broken variants of it.
_GOOD = "customer,movie,stars\n" + "".join(
    f"{u},{(u * 7 + j * 5) % 60},5\n" for u in range(300) for j in range(12)
)
FILES = {
    "good.csv": _GOOD,
    "no_item_column.csv": _GOOD.replace("movie", "film", 1),
    "text_ids.csv": _GOOD.replace("\n5,", "\nfive,", 1),
    "header_only.csv": "customer,movie,stars\n",
    "empty.csv": "",
    "bad_rating.csv": _GOOD.replace(",5\n", ",lots\n", 1),
    "ragged.csv": _GOOD.replace("\n7,", "\n7,1,2,3,", 1),
}
BYO = ["--user-col", "customer", "--item-col", "movie"]
CUDA = torch.cuda.is_available()

# (id, home, argv, needle): argv may name {file.csv} from FILES and {user} (a test user).
CASES = [
    # --- lcer explain
    ("explain-unknown-dataset", "trained", ["explain", "nosuch"], "unknown dataset 'nosuch'; known datasets: ml-100k, ml-1m, alishop, epinions"),
    ("explain-unknown-method", "trained", ["explain", "ml-100k", "--method", "magic"], "unknown method 'magic'; known: accent, amortised, fia, kaffes, kaffes-ps, kaffes-topk, lcer, lcer-plus, random-prefix"),
    ("explain-unknown-user", "trained", ["explain", "ml-100k", "--user", "no-such-user"], "user 'no-such-user' is not in dataset 'ml-100k'"),
    ("explain-unknown-item", "trained", ["explain", "ml-100k", "--user", "{user}", "--item", "999999"], "item '999999' is not in dataset 'ml-100k'"),
    ("explain-epochs-zero", "empty", ["explain", "ml-100k", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("explain-item-needs-user", "trained", ["explain", "ml-100k", "--item", "50"], "--item needs --user"),
    ("alpha-negative", "trained", ["explain", "ml-100k", "--alpha", "-1"], "--alpha must be a finite number in [0, 1e6), got -1.0"),
    ("alpha-nan", "trained", ["explain", "ml-100k", "--alpha", "nan"], "--alpha must be a finite number in [0, 1e6), got nan"),
    ("alpha-inf", "trained", ["explain", "ml-100k", "--alpha", "inf"], "--alpha must be a finite number in [0, 1e6), got inf"),
    ("alpha-huge", "trained", ["explain", "ml-100k", "--alpha", "1e300"], "--alpha must be a finite number in [0, 1e6), got 1e+300"),
    ("lam-negative", "trained", ["explain", "ml-100k", "--lam", "-0.5"], "--lam must be a finite number in [0, 1e6), got -0.5"),
    ("lam-nan", "trained", ["explain", "ml-100k", "--lam", "nan"], "--lam must be a finite number in [0, 1e6), got nan"),
    ("lam-huge", "trained", ["explain", "ml-100k", "--lam", "1e9"], "--lam must be a finite number in [0, 1e6)"),
    ("k-zero", "trained", ["explain", "ml-100k", "--k", "0"], "--k must be a positive integer, got 0"),
    ("k-negative", "trained", ["explain", "ml-100k", "--k", "-3"], "--k must be a positive integer, got -3"),
    ("k-too-large", "trained", ["explain", "ml-100k", "--k", "5000"], "k=5000 must be smaller than the number of items a user has not interacted with"),
    ("k-huge", "trained", ["explain", "ml-100k", "--k", str(10**20)], f"k={10**20} must be smaller"),
    ("k-nan", "trained", ["explain", "ml-100k", "--k", "nan"], "Invalid value for '--k'"),
    ("steps-zero", "trained", ["explain", "ml-100k", "--steps", "0"], "--steps must be an integer in [1, 1000000], got 0"),
    ("steps-negative", "trained", ["explain", "ml-100k", "--steps", "-1"], "--steps must be an integer in [1, 1000000], got -1"),
    ("steps-huge", "trained", ["explain", "ml-100k", "--steps", "10000000"], "--steps must be an integer in [1, 1000000], got 10000000"),
    ("steps-text", "trained", ["explain", "ml-100k", "--steps", "many"], "Invalid value for '--steps'"),
    ("users-zero", "trained", ["explain", "ml-100k", "--users", "0"], "--users must be a positive integer, got 0"),
    ("users-negative", "trained", ["explain", "ml-100k", "--users", "-1"], "--users must be a positive integer, got -1"),
    ("users-huge", "trained", ["explain", "ml-100k", "--users", "1000000"], "--users 1000000 is more than the 100 test users of 'ml-100k'"),
    ("users-nan", "trained", ["explain", "ml-100k", "--users", "nan"], "Invalid value for '--users'"),
    ("seed-negative", "trained", ["explain", "ml-100k", "--seed", "-1"], "--seed must be an integer in [0, 2^31), got -1"),
    ("seed-huge", "trained", ["explain", "ml-100k", "--seed", str(2**31)], f"--seed must be an integer in [0, 2^31), got {2**31}"),
    ("explain-unknown-option", "trained", ["explain", "ml-100k", "--bogus"], "No such option: --bogus"),
    ("explain-no-dataset", "trained", ["explain"], "Missing argument 'dataset'"),
    ("explain-no-model", "empty", ["explain", "ml-100k", "--no-train"], "no trained model for 'ml-100k': run `lcer train ml-100k` first"),
    # --- lcer prepare (built-in and --from FILE)
    ("prepare-unknown-dataset", "empty", ["prepare", "movielens"], "unknown dataset 'movielens'; known datasets: ml-100k, ml-1m, alishop, epinions"),
    ("prepare-seed-negative", "empty", ["prepare", "ml-100k", "--seed", "-1"], "--seed must be an integer in [0, 2^31), got -1"),
    ("prepare-seed-huge", "empty", ["prepare", "ml-100k", "--seed", str(2**33)], "--seed must be an integer in [0, 2^31)"),
    ("prepare-heldout-zero", "empty", ["prepare", "ml-100k", "--heldout", "0"], "--heldout must be >= 1, got 0"),
    ("prepare-option-without-from", "empty", ["prepare", "ml-100k", "--user-col", "customer"], "--user-col only apply with --from FILE"),
    ("byo-missing-column", "empty", ["prepare", "byo", "--from", "{no_item_column.csv}", *BYO], "column 'movie' (--item-col) not found in no_item_column.csv; available columns: customer, film, stars"),
    ("byo-non-numeric-id", "empty", ["prepare", "byo", "--from", "{text_ids.csv}", *BYO], "text_ids.csv line 62: column 'customer' must hold integer ids, got 'five'"),
    ("byo-no-rows", "empty", ["prepare", "byo", "--from", "{header_only.csv}", *BYO], "header_only.csv has no rows"),
    ("byo-empty-file", "empty", ["prepare", "byo", "--from", "{empty.csv}", *BYO], "empty.csv is empty"),
    ("byo-non-numeric-rating", "empty", ["prepare", "byo", "--from", "{bad_rating.csv}", *BYO, "--rating-col", "stars"], "bad_rating.csv line 2: column 'stars' must be numeric, got 'lots'"),
    ("byo-ragged-line", "empty", ["prepare", "byo", "--from", "{ragged.csv}", *BYO], "ragged.csv is not valid CSV"),
    ("byo-missing-file", "empty", ["prepare", "byo", "--from", "/no/such/file.csv", *BYO], "file not found: /no/such/file.csv"),
    ("byo-needs-item-col", "empty", ["prepare", "byo", "--from", "{good.csv}", "--user-col", "customer"], "--from needs --item-col"),
    ("byo-threshold-nan", "empty", ["prepare", "byo", "--from", "{good.csv}", *BYO, "--rating-col", "stars", "--threshold", "nan"], "--threshold must be a finite number, got nan"),
    ("byo-bad-separator", "empty", ["prepare", "byo", "--from", "{good.csv}", *BYO, "--sep", ";;"], "--sep must be one character, got ';;'"),
    ("byo-bad-name", "empty", ["prepare", "../evil", "--from", "{good.csv}", *BYO], "invalid dataset name '../evil'"),
    ("byo-builtin-name", "empty", ["prepare", "ml-100k", "--from", "{good.csv}", *BYO], "'ml-100k' is a built-in dataset"),
    ("byo-too-few-users", "empty", ["prepare", "byo", "--from", "{good.csv}", *BYO, "--heldout", "150"], "too few to hold out 150 validation and 150 test users"),
    # --- lcer stats
    ("stats-unknown-dataset", "empty", ["stats", "nosuch", "--json"], "unknown dataset 'nosuch'"),
    ("stats-no-dataset", "empty", ["stats"], "Missing argument 'dataset'"),
    # --- lcer bench (refused before any work)
    ("bench-unknown-dataset", "empty", ["bench", "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    ("bench-k-zero", "empty", ["bench", "--k", "0"], "--k must be a positive integer, got 0"),
    ("bench-steps-zero", "empty", ["bench", "--steps", "0"], "--steps must be an integer in [1, 1000000], got 0"),
    ("bench-users-zero", "empty", ["bench", "--users", "0"], "--users must be a positive integer, got 0"),
    ("bench-users-huge", "trained", ["bench", "--users", "1000", "--steps", "2"], "--users 1000 is more than the 100 test users of 'ml-100k'"),
    ("bench-sample-zero", "empty", ["bench", "--sample", "0"], "--sample must be a positive integer, got 0"),
    ("bench-patience-negative", "empty", ["bench", "--patience", "-1"], "--patience must be an integer >= 0, got -1"),
    ("bench-synthetic-too-small", "empty", ["bench", "--synthetic-items", "5"], "--synthetic-items must be in [1000, 1000000], got 5"),
    ("bench-seed-negative", "empty", ["bench", "--seed", "-1"], "--seed must be an integer in [0, 2^31), got -1"),
    ("bench-unknown-device", "empty", ["bench", "--device", "tpu"], "--device must be cpu or cuda[:N], got 'tpu'"),
    ("bench-no-cuda", "empty", ["bench", "--device", "cuda"], "--device cuda: no CUDA device is visible here"),
    # --- lcer sql and lcer report
    ("sql-empty", "store", ["sql", " "], "the SQL query is empty"),
    ("sql-no-database", "empty", ["sql", "select 1"], "no results database at "),
    ("sql-syntax", "store", ["sql", "selec 1"], "SQL error: Parser Error"),
    ("sql-unknown-table", "store", ["sql", "select * from nosuch"], "SQL error: Catalog Error"),
    ("sql-write", "store", ["sql", "drop table runs"], "read-only mode"),
    ("sql-bad-format", "empty", ["sql", "select 1", "--format", "xml"], "Invalid value for '--format'"),
    ("report-unknown-dataset", "empty", ["report", "nosuch"], "unknown dataset 'nosuch'"),
    ("report-no-runs", "empty", ["report", "ml-100k", "--no-train"], "no finished runs for dataset 'ml-100k'"),
    ("report-bad-format", "empty", ["report", "ml-100k", "--format", "csv"], "Invalid value for '--format'"),
    # --- lcer ui (refused before a server starts)
    ("ui-port-too-large", "empty", ["ui", "--port", "99999"], "port must be in 0..65535, not 99999"),
    ("ui-port-negative", "empty", ["ui", "--port", "-1"], "port must be in 0..65535, not -1"),
    ("ui-unknown-host", "empty", ["ui", "--host", "999.1.1.1", "--port", "0"], "--host '999.1.1.1' is not an address of this machine"),
    ("ui-timeout-zero", "empty", ["ui", "--ready-timeout", "0"], "--ready-timeout must be a positive number of seconds, got 0.0"),
    ("ui-timeout-nan", "empty", ["ui", "--ready-timeout", "nan"], "--ready-timeout must be a positive number of seconds, got nan"),
    ("ui-workers-zero", "empty", ["ui", "--workers", "0"], "Invalid value for '--workers'"),
    # --- lcer run
    ("run-deployment-and-runner", "empty", ["run", "ml-100k", "--explain-deployment", "lcer-explain/lcer-explain", "--runner", "ray"], "--explain-deployment runs the explanations on that deployment's work pool: it takes no --runner"),
    # --- lcer itself
    ("unknown-command", "empty", ["frobnicate"], "No such command 'frobnicate'"),
]  # fmt: skip


def _prepared(home: Path) -> Path:
    """The current preparation's folder of ML 100K under ``home``."""
    folder = home / "data" / "ml-100k"
    return folder / (folder / "current").read_text().strip()


def assert_refused(code: int, out: str, err: str, needle: str) -> None:
    """Exit status 2, nothing on stdout, exactly one ``error:`` line holding ``needle``."""
    assert code == 2, (code, out, err)
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def test_user(trained_home: Path) -> str:
    users = pl.read_parquet(_prepared(trained_home) / "users.parquet")
    return str(users.filter(pl.col("split") == "test")["raw_id"][0])


@pytest.mark.parametrize(
    ("home", "argv", "needle"),
    [
        pytest.param(
            *case[1:],
            id=case[0],
            marks=[pytest.mark.skipif(CUDA, reason="a CUDA device is visible")]
            if case[0] == "bench-no-cuda"
            else [],
        )
        for case in CASES
    ],
)
def test_bad_input_is_refused_in_one_line(
    home: str,
    argv: list[str],
    needle: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("LCER_MIRROR", raising=False)  # nothing may be downloaded here
    where = request.getfixturevalue("in_trained_home" if home == "trained" else "lcer_home")
    if home == "store":
        from lcer_core.store import ResultStore

        ResultStore().schema_version()  # creates the (empty) results database
    before = sorted(p for p in where.rglob("*") if p.is_file() and "results" not in p.parts)
    subst = {f"{{{name}}}": str(tmp_path / name) for name in FILES}
    if "{user}" in argv:
        subst["{user}"] = request.getfixturevalue("test_user")
    for name, content in FILES.items():
        (tmp_path / name).write_text(content)
    steps = [] if "--steps" in argv or argv[:1] != ["explain"] else ["--steps", "5"]
    code, out, err = run_cli([subst.get(a, a) for a in argv] + steps, capsys)
    assert_refused(code, out, err, needle)
    after = sorted(p for p in where.rglob("*") if p.is_file() and "results" not in p.parts)
    assert after == before  # a refused command writes nothing (the results db aside)


def test_help_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["--help"], capsys)
    assert code == 0 and "explain" in out and err == ""
    code, out, _ = run_cli(["explain", "--help"], capsys)
    assert code == 0 and "--alpha" in out
    code, out, _ = run_cli([], capsys)  # bare `lcer`: the help, with Typer's usual status 2
    assert code == 2 and "Usage" in out


def test_stale_or_damaged_model_says_to_train_again(
    lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model trained before the dataset was registered anew from another file, or a
    checkpoint that was damaged, is refused with the command that fixes it."""
    from lcer_core import models
    from lcer_core.datasets import load_prepared
    from lcer_core.recommender.multvae import MultVAEConfig

    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(FILES["good.csv"])
    second.write_text(FILES["good.csv"].replace(",5\n", ",4\n", 1) + "0,59,5\n")
    register = ["prepare", "byo", "--from", str(first), *BYO, "--heldout", "5"]
    assert run_cli(register, capsys)[0] == 0
    small = MultVAEConfig(hidden=16, latent=8, epochs=1)
    models.train_model(load_prepared("byo"), small, seed=0, device="cpu")
    assert run_cli(["explain", "byo", "--steps", "5", "--users", "1"], capsys)[0] == 0
    register[3] = str(second)
    assert run_cli([*register, "--force"], capsys)[0] == 0

    code, out, err = run_cli(["explain", "byo", "--steps", "5"], capsys)
    assert_refused(code, out, err, "was trained on data prepared differently")
    assert "run `lcer train byo` again" in err

    ckpt = models.train_model(load_prepared("byo"), small, seed=0, device="cpu").path
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, out, err = run_cli(["explain", "byo", "--steps", "5"], capsys)
    assert_refused(code, out, err, f"the model checkpoint {ckpt} cannot be read")
    assert "run `lcer train byo` again" in err


def test_missing_data_of_a_custom_dataset_says_to_register_again(
    lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.csv"
    good.write_text(FILES["good.csv"])
    code, _, err = run_cli(["prepare", "byo", "--from", str(good), *BYO, "--heldout", "5"], capsys)
    assert code == 0, err
    shutil.rmtree(lcer_home / "data" / "byo" / "raw")
    code, out, err = run_cli(["prepare", "byo", "--force"], capsys)
    assert_refused(code, out, err, "the data of 'byo' is missing")
    assert "lcer prepare byo --from FILE" in err
