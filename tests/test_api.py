"""The public API (``lcer_core.api``): its notebook example runs as written, and fsio's
atomic writes leave a whole file or none."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lcer_core
from lcer_core import api, fsio
from lcer_core.errors import LcerHomeError


def test_notebook_example_of_the_api_runs_as_written(
    lcer_home: Path, http_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module docstring of lcer_core.api, run by doctest on a fresh LCER_HOME over the
    loopback mirror: every output line (counts, shapes, metric names, ranks) is compared."""
    monkeypatch.setenv("LCER_MIRROR", http_mirror)
    result = doctest.testmod(api, verbose=False, raise_on_error=False, report=True)
    assert result.attempted >= 12
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
    # it trained and stored one model, and reuses it the second time
    assert len(list(lcer_home.glob("models/ml-100k/*/model.pt"))) == 1
    data = api.load_dataset("ml-100k")
    assert (
        api.train_model(data, epochs=2, seed=1, device="cpu").key == api.load_model("ml-100k").key
    )


def test_api_users_as_a_count_or_as_ids_and_validity_by_method(in_trained_home: Path) -> None:
    import torch

    from lcer_core.errors import InvalidParameterError

    data, model = api.load_dataset("ml-100k"), api.load_model("ml-100k")
    rec = model.recommender("cpu")
    first_two = sorted(data.users.filter(data.users["split"] == "test")["uid"].to_list())[:2]
    by_count, by_ids = api.make_pairs(rec, data, 2, k=3), api.make_pairs(rec, data, first_two, 3)
    assert torch.equal(by_count.targets, by_ids.targets) and len(by_count) == 6
    with pytest.raises(InvalidParameterError, match="users must be a positive integer, got 0"):
        api.make_pairs(rec, data, 0)
    expl = api.explain(rec, by_count, "fia")
    outcomes = api.evaluate(rec, by_count, expl)
    assert api.summarize(outcomes, "fia")["val_pct"] is None  # FIA reports no validity
    assert api.summarize(outcomes, "lcer")["val_pct"] is not None


def test_package_docstring_uses_only_functions_the_api_has() -> None:
    calls = {
        line.split("api.", 1)[1].split("(", 1)[0]
        for line in (lcer_core.__doc__ or "").splitlines()
        if "api." in line
    }
    assert calls and all(callable(getattr(api, name, None)) for name in calls), calls


# --------------------------------------------------------------------------- fsio


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    fsio.write_json_atomic(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    fsio.write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as a plain open() would make it


def test_a_failing_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted), fsio.atomic_file(target) as fh:
        fh.write(b"half")
        raise Interrupted
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_missing_folder_is_one_line_when_not_to_be_created(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "a.txt"
    with pytest.raises(LcerHomeError, match=r"^cannot write .*a\.txt: No such file"):
        fsio.write_text_atomic(target, "x", parents=False)
    assert not (tmp_path / "no").exists()


def test_a_full_file_size_limit_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """A write past RLIMIT_FSIZE fails with EFBIG for real (as a full disk fails with ENOSPC,
    see test_faults_home): one line, no partial file, no temporary."""
    folder = tmp_path / "out"
    folder.mkdir()
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        from lcer_core import fsio
        from lcer_core.errors import LcerError
        try:
            fsio.write_bytes_atomic({str(folder / "big.bin")!r}, b"x" * (256 * 1024))
        except LcerError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip().splitlines() == [
        f"cannot write {folder / 'big.bin'}: the file size limit is reached (File too large)"
    ], proc.stdout + proc.stderr
    assert list(folder.iterdir()) == []


def test_parquet_is_written_whole_with_its_metadata(tmp_path: Path) -> None:
    import polars as pl

    frame = pl.DataFrame({"uid": [1, 2], "score": [0.5, 0.25]})
    path = fsio.write_parquet_atomic(frame, tmp_path / "f.parquet", metadata={"k": "v"})
    assert pl.read_parquet(path).equals(frame)
    assert pl.read_parquet_metadata(path)["k"] == "v"
