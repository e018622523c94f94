"""State under LCER_HOME (issue 15): settings are part of a prepared dataset's identity,
damaged state is one line naming a command that really repairs it, and concurrent
commands neither train twice nor read two preparations mixed.

Everything runs the real ``lcer`` command in subprocesses on real files; refusals must
leave the whole LCER_HOME byte for byte unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from home_digest import tree_digest

LCER = str(Path(sys.executable).with_name("lcer"))
ROWS = [(u, (u * 7 + j * 5) % 60, 5) for u in range(300) for j in range(12)]
GOOD = "customer,movie,stars\n" + "".join(f"{u},{i},{r}\n" for u, i, r in ROWS)
BYO = ["--user-col", "customer", "--item-col", "movie"]


def lcer(
    argv: list[str], home: Path, *, mirror: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lcer`` on ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LCER_MIRROR")}
    env["LCER_HOME"] = str(home)
    if mirror:
        env["LCER_MIRROR"] = mirror
    return subprocess.run([LCER, *argv], capture_output=True, text=True, env=env, timeout=600)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``error:`` line holding every needle."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == "" and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def stats(home: Path, name: str) -> dict:
    return json.loads(ok(lcer(["stats", name, "--json"], home)).stdout)


def current_dir(home: Path, name: str) -> Path:
    folder = home / "data" / name
    pointer = folder / "current"
    return folder / pointer.read_text().strip() if pointer.exists() else folder  # flat: old layout


@pytest.fixture(scope="module")
def byo_trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A custom dataset prepared with seed 7 and 5 held-out users, then trained by two
    ``lcer train`` processes started together."""
    home = tmp_path_factory.mktemp("byo-home")
    csv = home.parent / "byo.csv"
    csv.write_text(GOOD)
    ok(lcer(["prepare", "byo", "--from", str(csv), *BYO, "--seed", "7", "--heldout", "5"], home))
    before = stats(home, "byo")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LCER_MIRROR")}
    env["LCER_HOME"] = str(home)
    argv = [LCER, "train", "byo", "--epochs", "2"]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:  # only the processes this fixture started, by pid
            if p.poll() is None:
                p.kill()
                p.wait()
    return {"home": home, "before": before, "outs": outs}


# --------------------------------------------------------------------------- settings


def test_builtin_settings_are_kept_by_train_and_other_ones_refused(
    tmp_path: Path, http_mirror: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ok(lcer(["prepare", "ml-100k", "--seed", "1", "--heldout", "50"], home, mirror=http_mirror))
    first = stats(home, "ml-100k")
    assert (first["seed"], first["test_users"], first["val_users"]) == (1, 50, 50)
    # A small model, then the commands that prepare what they need (the defaults, on main).
    script = (
        "from lcer_core import models; from lcer_core.datasets import load_prepared;"
        "from lcer_core.recommender.multvae import MultVAEConfig as C;"
        "models.train_model(load_prepared('ml-100k'), C(hidden=16, latent=8, epochs=1), seed=0,"
        " device='cpu')"
    )
    env = os.environ | {"LCER_HOME": str(home), "LCER_MIRROR": http_mirror}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    ok(lcer(["explain", "ml-100k", "--users", "1", "--steps", "2"], home, mirror=http_mirror))
    after = stats(home, "ml-100k")
    assert after["fingerprint"] == first["fingerprint"] and after["seed"] == 1
    assert after["test_users"] == 50

    before = tree_digest(home)
    for argv in (["--seed", "2"], ["--heldout", "100"], ["--seed", "1", "--heldout", "60"]):
        line = assert_refused(
            lcer(["prepare", "ml-100k", *argv], home, mirror=http_mirror),
            "ml-100k is prepared with seed 1 and 50 held-out users",
            "pass --force",
        )
        assert "not seed" in line
    again = lcer(["prepare", "ml-100k"], home, mirror=http_mirror)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    assert tree_digest(home) == before


def test_custom_dataset_keeps_its_seed_through_train(byo_trained: dict) -> None:
    after = stats(byo_trained["home"], "byo")
    assert after["seed"] == 7 and after["test_users"] == 5
    assert after["fingerprint"] == byo_trained["before"]["fingerprint"]


# --------------------------------------------------------------------------- races


def test_two_trainings_at_once_train_once_and_register_one_version(byo_trained: dict) -> None:
    from mlflow import MlflowClient

    outs = byo_trained["outs"]
    for code, _, err in outs:
        assert code == 0, err[-3000:]
    verbs = sorted("already trained" in out for _, out, _ in outs)
    assert verbs == [False, True], [out for _, out, _ in outs]
    home = byo_trained["home"]
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    # The registry URI too: otherwise one set globally by an earlier in-process test is used.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'multvae-byo'")
    assert len(versions) == 1, [v.version for v in versions]
    keys = [p.name for p in (home / "models" / "byo").iterdir() if p.is_dir()]
    assert len(keys) == 1


def test_reader_never_sees_two_preparations_mixed(tmp_path: Path, http_mirror: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ok(lcer(["prepare", "ml-100k"], home, mirror=http_mirror))
    stop = tmp_path / "stop"
    reader = textwrap.dedent(
        f"""
        import json, os, sys
        from pathlib import Path
        from lcer_core.datasets import load_prepared
        from lcer_core.datasets.prepare import fingerprint
        from lcer_core.datasets.prepared import PARTS
        from lcer_core.datasets.preprocess import SplitResult
        seen, reads, bad = set(), 0, []
        while not Path({str(stop)!r}).exists() or reads == 0:
            try:
                d = load_prepared("ml-100k")
            except Exception as exc:
                bad.append(f"{{type(exc).__name__}}: {{exc}}")
                continue
            res = SplitResult(
                parts={{p: d.part(p) for p in PARTS}}, users=d.users, items=d.items, stats={{}}
            )
            if fingerprint(res) != d.fingerprint:
                bad.append("mixed: the files are not those of meta.json")
            seen.add(d.fingerprint)
            reads += 1
        print(json.dumps({{"reads": reads, "seen": len(seen), "bad": bad[:5], "n_bad": len(bad)}}))
        """
    )
    env = os.environ | {"LCER_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-c", reader],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        time.sleep(2)
        for seed in (1, 2, 3, 4):
            ok(
                lcer(
                    ["prepare", "ml-100k", "--force", "--seed", str(seed)], home, mirror=http_mirror
                )
            )
        stop.touch()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # only the reader this test started, by pid
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out)
    assert result["n_bad"] == 0, result
    assert result["reads"] > 0 and result["seen"] >= 2, result
    versions = [
        p.name for p in (home / "data" / "ml-100k").iterdir() if p.name.startswith("prepared-")
    ]
    assert len(versions) == 1  # the older preparations are removed


# --------------------------------------------------------------------------- damaged state


def _copy(byo_trained: dict, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(byo_trained["home"], home, symlinks=True)
    return home


@pytest.mark.parametrize("damage", ["truncated", "pickle-payload"])
def test_damaged_checkpoint_is_one_line_and_lcer_train_repairs_it(
    byo_trained: dict, tmp_path: Path, damage: str
) -> None:
    home = _copy(byo_trained, tmp_path)
    key = (home / "models" / "byo" / "latest").read_text().strip()
    ckpt = home / "models" / "byo" / key / "model.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    else:  # a pickle that weights_only refuses to load
        torch.save({"state_dict": argparse.Namespace(payload="run me")}, ckpt)
    explain = ["explain", "byo", "--steps", "5", "--users", "1"]
    before = tree_digest(home)
    assert_refused(
        lcer(explain, home),
        f"the model checkpoint {ckpt} cannot be read",
        "run `lcer train byo --epochs 2` again",
    )
    assert tree_digest(home) == before
    trained = ok(lcer(["train", "byo", "--epochs", "2"], home))
    assert f"model {key} trained" in trained.stdout, trained.stdout
    ok(lcer(explain, home))


@pytest.mark.parametrize("repair", [["--force"], []])
def test_truncated_prepared_file_is_one_line_and_lcer_prepare_repairs_it(
    byo_trained: dict, tmp_path: Path, repair: list[str]
) -> None:
    home = _copy(byo_trained, tmp_path)
    good = stats(home, "byo")
    part = current_dir(home, "byo") / "train.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    before = tree_digest(home)
    assert_refused(
        lcer(["stats", "byo", "--json"], home),
        "the prepared data of 'byo'",
        "is damaged",
        "run `lcer prepare byo --force`",
    )
    assert tree_digest(home) == before
    ok(lcer(["prepare", "byo", *repair], home))  # the advised command (or plain prepare)
    again = stats(home, "byo")
    assert again["fingerprint"] == good["fingerprint"] and again["seed"] == 7
    ok(lcer(["explain", "byo", "--steps", "5", "--users", "1"], home))


def test_flat_layout_of_earlier_versions_is_moved_with_its_settings(
    byo_trained: dict, tmp_path: Path
) -> None:
    home = _copy(byo_trained, tmp_path)
    good = stats(home, "byo")
    folder, version = home / "data" / "byo", current_dir(home, "byo")
    for f in version.iterdir():  # as earlier versions laid it out: the files in data/NAME/
        f.rename(folder / f.name)
    version.rmdir()
    (folder / "current").unlink()
    again = stats(home, "byo")
    assert again["fingerprint"] == good["fingerprint"] and again["seed"] == 7
    assert not (folder / "meta.json").exists() and not (folder / "train.parquet").exists()
    ok(lcer(["explain", "byo", "--steps", "5", "--users", "1"], home))  # the model still fits
