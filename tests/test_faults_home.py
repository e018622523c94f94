"""Faults of LCER_HOME and of the recommender, caused for real (issue 9).

- A read-only LCER_HOME: a real read-only bind mount, in a private mount namespace
  (``unshare -Urm``) so that nothing outside the test sees it.
- A permission error: a folder of mode 0555, and a process that cannot override it (as root,
  the capabilities CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH are dropped before exec).
- A full disk: a tiny tmpfs mounted as LCER_HOME (or as its ``models/``) in the namespace;
  and, where namespaces are not allowed, a file-size limit (RLIMIT_FSIZE, EFBIG).
- Non-finite scores: hand-made recommenders that return NaN, and Mult-VAE checkpoints whose
  weights were set to NaN or infinity, explained through the library and through ``lcer``.

Each write fault must give exit status 2, one line naming the path and the reason, and
leave no half-written file; reads keep working on a read-only home.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
from tiny_recommenders import LinearRecommender, tiny_amortised

from lcer_core import models
from lcer_core.cli import main
from lcer_core.datasets import ensure_prepared
from lcer_core.errors import NonFiniteScoresError
from lcer_core.explainers import METHODS, Explanations, get_explainer
from lcer_core.metrics import evaluate_pairs
from lcer_core.pairs import build_pairs, histories_from_lists

DRIVER = Path(__file__).with_name("fault_driver.py")
PAGE = 4096


# --------------------------------------------------------------------------- helpers


@functools.cache
def namespaces_usable() -> str | None:
    """None if ``unshare -Urm`` can mount a tmpfs here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run(
            ["unshare", "-Urm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
            capture_output=True,
            text=True,
        )
    if probe.returncode != 0:
        return f"cannot mount in a user namespace here: {probe.stderr.strip()}"
    return None


def _prepared(home: Path) -> Path:
    """The current preparation's folder of ML 100K under ``home``."""
    folder = home / "data" / "ml-100k"
    return folder / (folder / "current").read_text().strip()


def _drop_dac_capabilities() -> None:
    """Run in the child before exec: root then obeys file permissions like anyone else."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_plan(
    plan: dict[str, Any],
    *,
    namespace: bool = False,
    preexec: Callable[[], None] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``plan`` through :mod:`fault_driver` (in a private mount namespace if asked)."""
    if namespace and (why := namespaces_usable()):
        pytest.skip(why)
    wrap = ["unshare", "-Urm"] if namespace else []
    proc = subprocess.run(
        [*wrap, sys.executable, str(DRIVER)],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec,
        cwd=Path(__file__).parent,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "mount_failed" in result:
        pytest.skip(result["mount_failed"])
    return result


def assert_one_line(step: dict[str, Any], *needles: str) -> str:
    """Exit status 2, nothing on stdout, exactly one ``error:`` line holding every needle."""
    assert step["code"] == 2, step
    assert step["out"] == "", step
    lines = step["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), step["err"]
    assert "Traceback" not in step["err"]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files_in(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_ratings_csv(path: Path, n_users: int = 300) -> Path:
    """A valid custom dataset: every user rates 12 of 60 items with 5 stars."""
    rows = ["customer,movie,stars"]
    for u in range(n_users):
        rows += [f"{u},{(u * 7 + j * 5) % 60},5" for j in range(12)]
    path.write_text("\n".join(rows) + "\n")
    return path


def copy_trained(trained_home: Path, home: Path, *, models: bool = True) -> Path:
    """A private copy of the trained home (prepared ML 100K, and its model if asked)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(trained_home / "data", home / "data")
    if models:
        shutil.copytree(trained_home / "models", home / "models")
    return home


def a_test_user(home: Path) -> str:
    users = pl.read_parquet(_prepared(home) / "users.parquet")
    return str(users.filter(pl.col("split") == "test")["raw_id"][0])


# --------------------------------------------------------------------------- read-only home


def test_read_only_home_refuses_writes_in_one_line_and_still_serves_reads(
    trained_home: Path, tmp_path: Path, http_mirror: str
) -> None:
    home = copy_trained(trained_home, tmp_path / "home")
    before = files_in(home)
    csv = write_ratings_csv(tmp_path / "ratings.csv")
    user = a_test_user(home)
    byo = ["prepare", "byo", "--from", str(csv), "--user-col", "customer", "--item-col", "movie"]
    plan = {
        "mounts": [["--bind", str(home), str(home)], ["-o", "remount,bind,ro", str(home)]],
        "steps": [
            {"argv": ["explain", "ml-100k", "--user", user, "--steps", "20", "--json"]},
            {"argv": ["stats", "ml-100k", "--json"]},
            {"argv": ["prepare", "ml-100k", "--force"]},
            {"argv": [*byo, "--heldout", "5"]},
            {"argv": ["sql", "select 1"]},
            {"argv": ["report", "ml-100k"]},
            {"argv": ["ui", "--port", "0", "--ready-timeout", "5"]},
            {"train": "ml-100k"},
        ],
        "list": [str(home)],
    }
    env = {"LCER_HOME": str(home), "LCER_MIRROR": http_mirror}
    steps = run_plan(plan, namespace=True, env=env)["steps"]

    explained, stats = steps[0], steps[1]
    assert explained["code"] == 0, explained["err"]
    assert json.loads(explained["out"])["user"] == user
    assert stats["code"] == 0 and json.loads(stats["out"])["users"] == 938
    for index, step in enumerate(steps[2:], start=2):
        if plan["steps"][index].get("argv", [""])[0] == "sql":  # a read: no database to create
            assert_one_line(step, "no results database at", str(home))
            continue
        line = assert_one_line(step, "Read-only file system", str(home))
        assert line.startswith(("error: cannot write", "error: cannot create")), line
    assert files_in(home) == before  # nothing written, nothing removed


# --------------------------------------------------------------------------- permissions


def test_permission_denied_on_home_is_one_line_and_writes_nothing(
    tmp_path: Path, http_mirror: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    csv = write_ratings_csv(tmp_path / "ratings.csv")
    byo = ["prepare", "byo", "--from", str(csv), "--user-col", "customer", "--item-col", "movie"]
    plan = {
        "steps": [
            {"argv": ["prepare", "ml-100k"]},
            {"argv": [*byo, "--heldout", "5"]},
            {"argv": ["report", "ml-100k"]},
            {"argv": ["ui", "--port", "0", "--ready-timeout", "5"]},
        ],
    }
    home.chmod(0o555)
    try:
        steps = run_plan(
            plan,
            preexec=_drop_dac_capabilities if os.geteuid() == 0 else None,
            env={"LCER_HOME": str(home), "LCER_MIRROR": http_mirror},
        )["steps"]
    finally:
        home.chmod(0o755)
    for step in steps:
        assert_one_line(step, "Permission denied", str(home))
    assert list(home.iterdir()) == []


# --------------------------------------------------------------------------- full disk


def test_full_disk_is_one_line_and_leaves_nothing_half_written(
    trained_home: Path, tmp_path: Path, http_mirror: str, shared_datasets: Path
) -> None:
    archive = (shared_datasets / "ml-100k.zip").stat().st_size
    tiny, roomy, store = tmp_path / "tiny", tmp_path / "roomy", tmp_path / "store"
    trained = copy_trained(trained_home, tmp_path / "trained", models=False)
    for folder in (tiny, roomy, store, trained / "models"):
        folder.mkdir()
    # roomy holds the archive (16 pages to spare) but not the prepared tables beside it.
    roomy_kb = (archive // PAGE + 16) * PAGE // 1024
    shard = store / "work" / "run" / "shard-0000.parquet"
    plan = {
        "mounts": [
            ["-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)],
            ["-t", "tmpfs", "-o", f"size={roomy_kb}k", "tmpfs", str(roomy)],
            ["-t", "tmpfs", "-o", "size=32k", "tmpfs", str(store)],
            ["-t", "tmpfs", "-o", "size=64k", "tmpfs", str(trained / "models")],
        ],
        "steps": [
            {"argv": ["prepare", "ml-100k"], "env": {"LCER_HOME": str(tiny)}},
            {"argv": ["prepare", "ml-100k"], "env": {"LCER_HOME": str(roomy)}},
            {"argv": ["report", "ml-100k"], "env": {"LCER_HOME": str(store)}},
            {"write_shard": str(shard)},
            {"train": "ml-100k", "env": {"LCER_HOME": str(trained)}},
        ],
        "list": [str(tiny), str(roomy), str(store), str(trained / "models")],
    }
    result = run_plan(plan, namespace=True, env={"LCER_MIRROR": http_mirror})
    download, prepare, report, shard_write, train = result["steps"]
    assert_one_line(download, "the disk is full", str(tiny / "data" / "ml-100k"))
    assert_one_line(prepare, "the disk is full", str(roomy / "data" / "ml-100k"))
    assert_one_line(report, "No space left on device", str(store / "results" / "lcer.duckdb"))
    assert_one_line(shard_write, "the disk is full", str(shard))
    assert_one_line(train, "the disk is full", "model.pt")
    # No partial archive, no half-prepared folder, no database husk, no temporary file.
    assert result["listing"] == {str(d): [] for d in plan["list"]}


def test_file_size_limit_is_one_line_and_leaves_no_partial_file(
    tmp_path: Path, http_mirror: str
) -> None:
    """Works without any privilege: writes beyond RLIMIT_FSIZE fail with EFBIG."""
    home = tmp_path / "home"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    steps = run_plan(
        {"steps": [{"argv": ["prepare", "ml-100k"]}]},
        preexec=limit,
        env={"LCER_HOME": str(home), "LCER_MIRROR": http_mirror},
    )["steps"]
    assert_one_line(steps[0], "the file size limit is reached", "ml-100k.zip")
    assert [p for p in home.rglob("*") if p.is_file()] == []


# --------------------------------------------------------------------------- non-finite scores


class NaNForUsersWith(LinearRecommender):
    """Linear scores, but NaN for every input that holds item ``poison``."""

    def __init__(self, weight: torch.Tensor, poison: int) -> None:
        super().__init__(weight)
        self.poison = poison

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        bad = (x[:, self.poison] > 0)[:, None]
        return torch.where(bad, torch.full_like(x, float("nan")), super().scores(x))


class NaNWithout(LinearRecommender):
    """Finite on a user's own history, NaN once item ``keystone`` is removed from it
    (``0 · log 0``), the way a numerically broken model fails only off its training inputs."""

    def __init__(self, weight: torch.Tensor, keystone: int) -> None:
        super().__init__(weight)
        self.keystone = keystone

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return super().scores(x) + 0.0 * torch.log(x[:, self.keystone : self.keystone + 1])


def _weights(n: int = 12) -> torch.Tensor:
    return torch.randn(n, n, generator=torch.Generator().manual_seed(3))


def test_build_pairs_refuses_nan_scores_of_some_users() -> None:
    rec = NaNForUsersWith(_weights(), poison=4)
    hist = histories_from_lists([0, 1, 2], [[1, 2], [4, 5], [3, 4, 6]])
    with pytest.raises(NonFiniteScoresError, match="non-finite scores for 2 user"):
        build_pairs(rec, hist, 3)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_explainer_fails_loudly_on_nan_counterfactual_scores(method: str) -> None:
    rec = NaNWithout(_weights(), keystone=2)
    pairs = build_pairs(rec, histories_from_lists([0, 1], [[1, 2, 3], [2, 5, 7, 9]]), 3)
    assert torch.isfinite(pairs.thresholds).all()  # the factual scores are fine
    params = {"steps": 30} if method in ("lcer", "lcer-plus") else {}
    if method == "amortised":  # its network learnt on a finite recommender of the same items
        params = {"network": tiny_amortised(LinearRecommender(_weights()), "nan-test", k=1).network}
    with pytest.raises(NonFiniteScoresError, match="non-finite scores"):
        get_explainer(method, **params).explain(rec, pairs, seed=0)


def test_lcer_on_finite_scores_is_unaffected_by_the_check() -> None:
    rec = LinearRecommender(_weights())
    pairs = build_pairs(rec, histories_from_lists([0, 1], [[1, 2, 3], [2, 5, 7, 9]]), 3)
    out = get_explainer("lcer", steps=30).explain(rec, pairs, seed=0)
    assert torch.isfinite(out.importance[pairs.mask]).all()


def test_metrics_refuse_nan_scores_of_a_counterfactual_input() -> None:
    rec = NaNWithout(_weights(), keystone=2)
    pairs = build_pairs(rec, histories_from_lists([0], [[1, 2, 3]]), 3)
    removed = pairs.items == 2  # the CE removes the keystone
    expl = Explanations(removed, torch.full(removed.shape, float("nan")))
    with pytest.raises(NonFiniteScoresError, match="during evaluation"):
        evaluate_pairs(rec, pairs, expl)


def _save_broken(trained_home: Path, home: Path, monkeypatch: pytest.MonkeyPatch, break_) -> None:
    """Save the trained Mult-VAE, with ``break_`` applied to it, as the latest model of ``home``."""
    monkeypatch.setenv("LCER_HOME", str(trained_home))
    model = models.load_model("ml-100k")
    data = ensure_prepared("ml-100k")
    with torch.no_grad():
        break_(model.module, data)
    monkeypatch.setenv("LCER_HOME", str(home))
    models.save_model(model, ensure_prepared("ml-100k"))


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return {"code": code, "out": out.out, "err": out.err}


def test_nan_checkpoint_fails_loudly_at_the_command_line(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    home = copy_trained(trained_home, tmp_path / "home", models=False)

    def all_nan(module: torch.nn.Module, data: Any) -> None:
        for p in module.parameters():
            p.fill_(float("nan"))

    _save_broken(trained_home, home, monkeypatch, all_nan)
    user = a_test_user(home)
    for argv in (
        ["explain", "ml-100k", "--user", user, "--steps", "20"],
        ["explain", "ml-100k", "--users", "3", "--steps", "5", "--json"],
    ):
        step = _cli(argv, capsys)
        assert_one_line(step, "the recommender produced non-finite scores")


def test_inf_weight_fails_loudly_only_once_explaining(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """An infinite input weight saturates tanh: the user's own top-K is finite, but removing
    the item gives 0·inf = NaN. LCER's final check and the baselines' re-scoring catch it."""
    home = copy_trained(trained_home, tmp_path / "home", models=False)
    user = a_test_user(home)

    def inf_item(module: torch.nn.Module, data: Any) -> None:
        item = max(data.history(data.uid_of(user)))  # an item of the user's (never item 0)
        module.enc1.weight[:, item] = float("inf")

    _save_broken(trained_home, home, monkeypatch, inf_item)
    for method in sorted(METHODS):
        step = _cli(
            ["explain", "ml-100k", "--user", user, "--method", method, "--steps", "20"], capsys
        )
        if method == "amortised":  # its network is trained first, one line says so
            notice, *rest = step["err"].splitlines()
            assert notice.startswith("no amortised network for ml-100k"), step
            step = {**step, "err": "\n".join(rest)}
        line = assert_one_line(step, "the recommender produced non-finite scores")
        lcer_like = method in ("lcer", "lcer-plus")
        if method == "amortised":  # the network's scores are finite; evaluation catches it
            assert "during evaluation" in line or "items removed" in line, line
        else:
            assert "while explaining" in line if lcer_like else "items removed" in line, line
