"""Download faults, caused for real by a misbehaving loopback HTTP server (issue 9).

Each fault gives one clear error after bounded retries and leaves no file behind; a
transient fault followed by a good answer succeeds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from dataset_fixtures import (
    FaultyServer,
    closed_port_url,
    files_under,
    ml100k_members,
    run_cli,
    zip_bytes,
)

from lcer_core.datasets import get_spec, prepare_dataset
from lcer_core.datasets.download import (
    DownloadSettings,
    download,
    download_settings,
    fetch,
    source_url,
)
from lcer_core.errors import (
    ChecksumMismatchError,
    DataFormatError,
    DownloadError,
    InvalidParameterError,
)

FAST = DownloadSettings(timeout=5.0, attempts=3, backoff=0.0)


@pytest.fixture(scope="module")
def archive(shared_datasets: Path) -> bytes:
    return (shared_datasets / "ml-100k.zip").read_bytes()


@pytest.fixture(autouse=True)
def _no_ambient_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LCER_MIRROR", raising=False)
    monkeypatch.setenv("LCER_DOWNLOAD_BACKOFF", "0")


def _fetch_ml100k(
    url: str, monkeypatch: pytest.MonkeyPatch, settings: DownloadSettings = FAST
) -> Path:
    monkeypatch.setenv("LCER_MIRROR", url)
    return fetch(get_spec("ml-100k"), settings=settings, progress=False)


def test_500_then_success_after_retry(
    lcer_home: Path, archive: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultyServer({"ml-100k.zip": archive}, plan=["500", "close"]) as srv:
        path = _fetch_ml100k(srv.url, monkeypatch)
    assert srv.hits == ["/ml-100k.zip"] * 3
    assert path == lcer_home / "data" / "ml-100k" / "raw" / "ml-100k.zip"
    assert path.read_bytes() == archive
    assert files_under(lcer_home / "data") == [path]


def test_server_closing_mid_file_every_time(
    lcer_home: Path, archive: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        FaultyServer({"ml-100k.zip": archive}, default="close") as srv,
        pytest.raises(
            DownloadError, match=r"after 3 attempts: the server closed the connection"
        ) as exc,
    ):
        _fetch_ml100k(srv.url, monkeypatch)
    assert len(srv.hits) == 3
    assert srv.url in str(exc.value)
    assert files_under(lcer_home / "data") == [] and not (lcer_home / "data" / "ml-100k").exists()


def test_404_is_final(lcer_home: Path, archive: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        FaultyServer({"ml-100k.zip": archive}, default="404") as srv,
        pytest.raises(DownloadError, match=r"ml-100k\.zip: HTTP 404 Not Found"),
    ):
        _fetch_ml100k(srv.url, monkeypatch)
    assert len(srv.hits) == 1
    assert files_under(lcer_home) == []


def test_500_forever_gives_up_after_the_bounded_attempts(
    lcer_home: Path, archive: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        FaultyServer({"ml-100k.zip": archive}, default="500") as srv,
        pytest.raises(DownloadError, match=r"after 3 attempts: HTTP 500"),
    ):
        _fetch_ml100k(srv.url, monkeypatch)
    assert len(srv.hits) == 3
    assert files_under(lcer_home) == []


def test_too_slow_times_out(
    lcer_home: Path, archive: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = DownloadSettings(timeout=0.3, attempts=2, backoff=0.0)
    with (
        FaultyServer({"ml-100k.zip": archive}, default="slow", delay=1.5) as srv,
        pytest.raises(DownloadError, match=r"after 2 attempts: timed out after 0\.3 s"),
    ):
        _fetch_ml100k(srv.url, monkeypatch, slow)
    assert len(srv.hits) == 2
    assert files_under(lcer_home) == []


def test_wrong_bytes_checksum_mismatch_removes_the_file(
    lcer_home: Path, shared_datasets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = ml100k_members(shared_datasets)
    members["ml-100k/u.item"] = members["ml-100k/u.item"].replace(b"Toy Story", b"Toy Storm", 1)
    bad = zip_bytes(members)
    got = hashlib.sha256(members["ml-100k/u.item"]).hexdigest()
    want = get_spec("ml-100k").checksums["u.item"]
    with (
        FaultyServer({"ml-100k.zip": bad}) as srv,
        pytest.raises(ChecksumMismatchError) as exc,
    ):
        _fetch_ml100k(srv.url, monkeypatch)
    assert "u.item" in str(exc.value) and want in str(exc.value) and got in str(exc.value)
    assert len(srv.hits) == 1  # wrong content is not a transient fault
    assert files_under(lcer_home) == []


def test_wrong_bytes_not_an_archive(lcer_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        FaultyServer({"ml-100k.zip": b"<html>maintenance</html>"}) as srv,
        pytest.raises(DataFormatError, match=r"ml-100k\.zip is not a valid zip archive"),
    ):
        _fetch_ml100k(srv.url, monkeypatch)
    assert files_under(lcer_home) == []


def test_connection_refused_retries_then_fails(
    lcer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        closed_port_url() as url,
        pytest.raises(DownloadError, match=r"after 3 attempts: cannot connect"),
    ):
        _fetch_ml100k(url, monkeypatch)
    assert files_under(lcer_home) == []


def test_cli_download_fault_is_one_line(
    lcer_home: Path,
    archive: bytes,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LCER_DOWNLOAD_ATTEMPTS", "2")
    with FaultyServer({"ml-100k.zip": archive}, default="close") as srv:
        monkeypatch.setenv("LCER_MIRROR", srv.url)
        code, out, err = run_cli(["prepare", "ml-100k"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(
        f"error: cannot download {srv.url}/ml-100k.zip after 2 attempts: the server closed"
    )
    assert len(srv.hits) == 2
    assert files_under(lcer_home) == []


def test_file_mirror_and_reuse_of_a_verified_archive(
    lcer_home: Path, shared_datasets: Path, archive: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LCER_MIRROR", shared_datasets.as_uri())
    spec = get_spec("ml-100k")
    assert source_url(spec) == f"{shared_datasets.as_uri()}/ml-100k.zip"
    path = fetch(spec, settings=FAST, progress=True)  # draws the progress bar code path too
    assert path.read_bytes() == archive
    with FaultyServer({}, default="404") as srv:  # already there: no request at all
        monkeypatch.setenv("LCER_MIRROR", srv.url)
        assert fetch(spec, settings=FAST) == path
    assert srv.hits == []


def test_corrupt_archive_already_in_place_is_removed(
    lcer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = lcer_home / "data" / "ml-100k" / "raw"
    raw.mkdir(parents=True)
    (raw / "ml-100k.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataFormatError, match=r"removed .*ml-100k\.zip; run again"):
        fetch(get_spec("ml-100k"), settings=FAST)
    assert not (raw / "ml-100k.zip").exists()


def test_missing_file_on_file_mirror_is_final(
    lcer_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LCER_MIRROR", (tmp_path / "empty").as_uri())
    with pytest.raises(DownloadError, match=r"no such file .*ml-1m\.zip"):
        prepare_dataset("ml-1m")
    assert files_under(lcer_home) == []


def test_bad_settings_and_mirror_scheme(lcer_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LCER_MIRROR", "ftp://example.org/data")
    with pytest.raises(InvalidParameterError, match="LCER_MIRROR must be a URL that starts with"):
        source_url(get_spec("ml-100k"))
    monkeypatch.setenv("LCER_DOWNLOAD_TIMEOUT", "soon")
    monkeypatch.delenv("LCER_MIRROR")
    with pytest.raises(
        InvalidParameterError, match="LCER_DOWNLOAD_TIMEOUT must be a positive number of seconds"
    ):
        download_settings()
    with pytest.raises(InvalidParameterError, match="attempts must be >= 1"):
        DownloadSettings(attempts=0)
    with pytest.raises(InvalidParameterError, match="only http"):
        download("ftp://x/y", lcer_home / "y")


def test_download_verify_failure_leaves_no_temporary(lcer_home: Path, archive: bytes) -> None:
    dest = lcer_home / "dl" / "thing.zip"

    def reject(tmp: Path) -> None:
        assert tmp.is_file() and tmp.parent == dest.parent and tmp.name.endswith(".part")
        raise DataFormatError("rejected")

    with FaultyServer({"thing.zip": archive}) as srv:
        with pytest.raises(DataFormatError, match="rejected"):
            download(f"{srv.url}/thing.zip", dest, verify=reject, settings=FAST)
        assert download(f"{srv.url}/thing.zip", dest, settings=FAST).read_bytes() == archive
    assert [p.name for p in files_under(lcer_home / "dl")] == ["thing.zip"]
