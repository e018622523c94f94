"""Hostile archives and mirrors (issue 15, part B), attacked for real: archives written here,
served by a loopback HTTP mirror, fed to the real ``lcer prepare`` in a subprocess.

Each attack must end in exit status 2 and one line, with the whole LCER_HOME tree byte for
byte as it was (a lived-in home: another dataset already prepared); the decompression bombs
run under a 2 GiB address-space limit. The last tests check that the bytes a result comes
from are recorded: in ``meta.json``, in DuckDB's ``datasets`` row and on the MLflow run.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import http.server
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
from conftest import serve_directory
from dataset_fixtures import ml100k_members, synthetic_ratings, write_ml1m, write_zip
from home_digest import tree_digest

from lcer_core.datasets import get_spec
from lcer_core.datasets.download import (
    MAX_MEMBER_BYTES,
    ArchiveLimits,
    read_members,
)
from lcer_core.errors import DataFormatError
from lcer_core.store.migrations import SCHEMA_VERSION, apply_migrations

LCER = Path(sys.executable).with_name("lcer")
GIB = 1 << 30
ADDRESS_SPACE = 2 * GIB  # the bomb tests' limit on the whole `lcer prepare` process
ZERO_MIB = bytes(1 << 20)
MOVIES = {10 + 3 * i: (f"Movie {i} (1990)", "Drama") for i in range(40)}


# --------------------------------------------------------------------------- helpers


def _address_space_limit(size: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (size, size))


def _lcer(
    args: list[str],
    home: Path,
    mirror: str,
    *,
    bounded: bool = False,
    address_space: int = ADDRESS_SPACE,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lcer`` on ``home`` and ``mirror`` (under ``address_space`` bytes of
    address space, 2 GiB unless told, if ``bounded``)."""
    full = {
        **os.environ,
        "LCER_HOME": str(home),
        "LCER_MIRROR": mirror,
        "LCER_DOWNLOAD_ATTEMPTS": "1",
        "LCER_DOWNLOAD_BACKOFF": "0",
        "LCER_DOWNLOAD_TIMEOUT": "30",
        **(env or {}),
    }
    full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [str(LCER), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_address_space_limit(address_space) if bounded else None,
    )


def _assert_refused(
    proc: subprocess.CompletedProcess[str], home: Path, before: dict[str, str], *needles: str
) -> str:
    """Exit 2, one ``error:`` line holding every needle, no traceback, LCER_HOME unchanged."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert tree_digest(home) == before
    return lines[0]


@pytest.fixture(scope="module")
def lived_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template LCER_HOME in use: ML 1M (a fixture) prepared, ML 100K and Epinions not yet."""
    root = tmp_path_factory.mktemp("lived-in")
    home, mirror = root / "home", root / "mirror"
    home.mkdir()
    write_ml1m(mirror, synthetic_ratings(n_users=60, n_items=40, seed=1), MOVIES)
    server, url = serve_directory(mirror)
    try:
        proc = _lcer(["prepare", "ml-1m", "--heldout", "5"], home, url)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    return home


@pytest.fixture()
def home(lived_in: Path, tmp_path: Path) -> Path:
    """A fresh copy of the lived-in LCER_HOME for one test."""
    target = tmp_path / "home"
    shutil.copytree(lived_in, target, symlinks=True)
    return target


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An empty folder served by a real loopback HTTP server: (folder, base URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server, url = serve_directory(folder)
    yield folder, url
    server.shutdown()
    server.server_close()


def _bomb_zip(path: Path, shared: Path, size: int) -> Path:
    """The real ML 100K archive but with ``u.genre`` of ``size`` zero bytes, written streaming."""
    members = ml100k_members(shared)
    del members["ml-100k/u.genre"]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        with zf.open("ml-100k/u.genre", "w", force_zip64=True) as fh:
            for _ in range(size // len(ZERO_MIB)):
                fh.write(ZERO_MIB)
    return path


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> Path:
    """ml-100k.zip whose u.genre expands to 2 GiB (about 2 MB compressed; its header says so)."""
    return _bomb_zip(tmp_path_factory.mktemp("bomb") / "ml-100k.zip", shared_datasets, 2 * GIB)


def _declare_size(data: bytes, member: str, size: int) -> bytes:
    """``data`` (a zip) with the uncompressed size of ``member`` in its central directory set to ``size``."""
    buf = bytearray(data)
    end = buf.rfind(b"PK\x05\x06")
    (pos,) = struct.unpack_from("<I", buf, end + 16)  # offset of the central directory
    while buf[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<HHH", buf, pos + 28)
        if bytes(buf[pos + 46 : pos + 46 + n]) == member.encode():
            (declared,) = struct.unpack_from("<I", buf, pos + 24)
            if declared != 0xFFFFFFFF:
                struct.pack_into("<I", buf, pos + 24, size)
                return bytes(buf)
            extra = pos + 46 + n
            while extra < pos + 46 + n + m:
                tag, length = struct.unpack_from("<HH", buf, extra)
                if tag == 1:  # zip64: the uncompressed size comes first
                    struct.pack_into("<Q", buf, extra + 4, size)
                    return bytes(buf)
                extra += 4 + length
        pos += 46 + n + m + k
    raise AssertionError(f"{member} not found in the central directory")


# --------------------------------------------------------------------------- decompression bombs


def test_zip_member_expanding_to_2gib_is_refused_before_reading(
    home: Path, mirror: tuple[Path, str], bomb_zip: Path
) -> None:
    folder, url = mirror
    shutil.copyfile(bomb_zip, folder / "ml-100k.zip")
    assert bomb_zip.stat().st_size < 4 << 20  # a few MB on the wire
    before = tree_digest(home)
    proc = _lcer(["prepare", "ml-100k"], home, url, bounded=True)
    _assert_refused(
        proc,
        home,
        before,
        "ml-100k.zip: ml-100k/u.genre declares 2,147,483,648 bytes uncompressed",
        f"{MAX_MEMBER_BYTES:,}",
        "LCER_MAX_MEMBER_BYTES",
    )


def test_zip_member_lying_about_its_size_is_read_only_as_far_as_declared(
    home: Path, mirror: tuple[Path, str], bomb_zip: Path
) -> None:
    """u.genre says 202 bytes (the real size) but its deflate stream holds 2 GiB of zeros."""
    folder, url = mirror
    (folder / "ml-100k.zip").write_bytes(
        _declare_size(bomb_zip.read_bytes(), "ml-100k/u.genre", 202)
    )
    with zipfile.ZipFile(folder / "ml-100k.zip") as zf:
        assert zf.getinfo("ml-100k/u.genre").file_size == 202
    before = tree_digest(home)
    proc = _lcer(["prepare", "ml-100k"], home, url, bounded=True)
    _assert_refused(proc, home, before, "ml-100k.zip is not a valid zip archive", "u.genre")


def _bomb_member(path: Path, shared: Path, member: str, method: int, size: int) -> Path:
    """The real ML 100K archive with ``member`` compressed by ``method`` and holding ``size``
    zero bytes, but declaring its real size."""
    members = ml100k_members(shared)
    real = len(members.pop(member))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo(member)
        info.compress_type = method
        with zf.open(info, "w", force_zip64=True) as fh:
            for _ in range(size // len(ZERO_MIB)):
                fh.write(ZERO_MIB)
    path.write_bytes(_declare_size(path.read_bytes(), member, real))
    return path


@pytest.mark.parametrize(
    ("member", "method", "name", "size"),
    [
        ("ml-100k/u.genre", zipfile.ZIP_BZIP2, "bzip2", 768 << 20),
        ("ml-100k/u.item", zipfile.ZIP_LZMA, "lzma", 512 << 20),
    ],
)
def test_bzip2_and_lzma_members_are_refused_unread(
    home: Path,
    mirror: tuple[Path, str],
    shared_datasets: Path,
    member: str,
    method: int,
    name: str,
    size: int,
) -> None:
    """A bzip2 or LZMA member that declares its real size and holds hundreds of MiB of zeros
    in under 1 MB: zipfile decompresses a whole block per read, unbounded (a MemoryError under
    1 GiB of address space). The real archives are deflated: other methods are refused unread."""
    folder, url = mirror
    archive = _bomb_member(folder / "ml-100k.zip", shared_datasets, member, method, size)
    assert archive.stat().st_size < 1 << 20
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo(member).file_size == len(ml100k_members(shared_datasets)[member])
    before = tree_digest(home)
    proc = _lcer(["prepare", "ml-100k"], home, url, bounded=True, address_space=GIB)
    _assert_refused(
        proc,
        home,
        before,
        f"ml-100k.zip: {member} is compressed with {name} (zip method {method})",
        "only stored and deflate members are read",
    )


def test_out_of_memory_anywhere_is_one_line(
    home: Path, mirror: tuple[Path, str], tmp_path: Path
) -> None:
    """The user's own file, bigger than the process may hold (3 GiB, sparse, under 2 GiB of
    address space): it is read whole, runs out of memory, and that is one line and exit 2
    too, with nothing written."""
    big = tmp_path / "big.csv"
    with big.open("wb") as fh:
        fh.write(b"user,item\n1,2\n")
        fh.truncate(3 * GIB)
    before = tree_digest(home)
    args = ["prepare", "mine", "--from", str(big), "--user-col", "user", "--item-col", "item"]
    proc = _lcer(args, home, mirror[1], bounded=True)
    _assert_refused(proc, home, before, "out of memory (", "more memory than this process may use")


def test_bz2_bomb_for_epinions_is_stopped_at_the_member_cap(
    home: Path, mirror: tuple[Path, str]
) -> None:
    """A 2.5 kB .bz2 (32 streams of 64 MiB of zeros) that expands to 2 GiB."""
    folder, url = mirror
    (folder / "ratings_data.txt.bz2").write_bytes(bz2.compress(bytes(64 << 20)) * 32)
    assert (folder / "ratings_data.txt.bz2").stat().st_size < 4096
    before = tree_digest(home)
    proc = _lcer(["prepare", "epinions"], home, url, bounded=True)
    _assert_refused(
        proc,
        home,
        before,
        "ratings_data.txt.bz2: ratings_data.txt expands to more than",
        f"{MAX_MEMBER_BYTES:,}",
        "stopped reading it",
    )


def test_gz_is_decompressed_in_a_stream_under_the_cap(tmp_path: Path) -> None:
    """The one-file reader takes .gz too: a gzip bomb stops at the cap, a good file is checked."""
    spec = get_spec("epinions")
    gz = dataclasses.replace(spec, archive="ratings_data.txt.gz")
    path = tmp_path / "ratings_data.txt.gz"
    path.write_bytes(gzip.compress(bytes(4 << 20), compresslevel=9) * 3)  # 12 MiB of zeros
    small = ArchiveLimits(member_bytes=8 << 20)
    with pytest.raises(DataFormatError, match=r"expands to more than 8,388,608 bytes"):
        read_members(gz, path, limits=small)
    path.write_bytes(gzip.compress(b"1 2 5\n3 4 1\n"))
    got = read_members(gz, path, limits=small)
    assert got.data == {"ratings_data.txt": b"1 2 5\n3 4 1\n"}
    assert got.sha256["ratings_data.txt"] == hashlib.sha256(b"1 2 5\n3 4 1\n").hexdigest()


@pytest.mark.parametrize("count_lies", [False, True])
def test_zip_listing_too_many_entries_is_refused(
    home: Path, mirror: tuple[Path, str], shared_datasets: Path, count_lies: bool
) -> None:
    """ZipFile parses the central directory whole: 10,001 more entries are refused unread,
    also when the end record's entry count lies (it is the directory's size that tells)."""
    folder, url = mirror
    members = ml100k_members(shared_datasets)
    pad = "x" * 400 if count_lies else ""
    members |= {f"ml-100k/pad/{pad}{i}": b"" for i in range(10_001)}
    write_zip(folder / "ml-100k.zip", members)
    if count_lies:
        data = bytearray((folder / "ml-100k.zip").read_bytes())
        end = data.rfind(b"PK\x05\x06")
        struct.pack_into("<HH", data, end + 8, 7, 7)  # "7 entries"
        (folder / "ml-100k.zip").write_bytes(bytes(data))
    before = tree_digest(home)
    proc = _lcer(["prepare", "ml-100k"], home, url)
    expected = "7 entries in 4,619,780 bytes" if count_lies else "10,008 entries in 619,380 bytes"
    _assert_refused(proc, home, before, f"ml-100k.zip lists {expected}", "not read")


# --------------------------------------------------------------------------- hostile servers


class _HostileServer:
    """A loopback server answering every GET with a ``mode``; counts the body bytes it sent."""

    def __init__(self, mode: str, size: int) -> None:
        self.sent = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # no Content-Length needed: the body ends at close

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                if mode == "announces-too-much":
                    self.send_header("Content-Length", str(5 * GIB))
                body = ZERO_MIB
                if mode == "gzip-encoded":
                    body = gzip.compress(bytes(size), compresslevel=9)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if mode == "gzip-encoded":
                        self.wfile.write(body)
                        outer.sent += len(body)
                        return
                    while outer.sent < size:
                        self.wfile.write(body)
                        outer.sent += len(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("endless", "sent more than the cap of 1,048,576 bytes per download"),
        ("announces-too-much", "announces 5,368,709,120 bytes, more than the cap"),
        ("gzip-encoded", "the server sent 'gzip'-encoded content"),
    ],
)
def test_download_is_capped_while_streaming_whatever_the_headers_say(
    home: Path, mode: str, needle: str
) -> None:
    """No Content-Length and 64 MiB sent; 5 GiB announced; a gzip-encoded body (a bomb once decoded)."""
    size = 64 << 20
    server = _HostileServer(mode, size)
    try:
        before = tree_digest(home)
        proc = _lcer(
            ["prepare", "ml-100k"], home, server.url, env={"LCER_MAX_DOWNLOAD_BYTES": str(1 << 20)}
        )
    finally:
        server.close()
    _assert_refused(proc, home, before, needle)
    if mode == "endless":
        assert server.sent < size // 2  # the client hung up once over the cap


def test_cap_settings_are_checked(home: Path, mirror: tuple[Path, str]) -> None:
    before = tree_digest(home)
    proc = _lcer(["prepare", "ml-100k"], home, mirror[1], env={"LCER_MAX_MEMBER_BYTES": "-5"})
    _assert_refused(proc, home, before, "LCER_MAX_MEMBER_BYTES must be a positive number of bytes")


# --------------------------------------------------------------------------- changed members


def test_changed_u_genre_names_the_member_and_both_digests(
    home: Path, mirror: tuple[Path, str], shared_datasets: Path
) -> None:
    folder, url = mirror
    members = ml100k_members(shared_datasets)
    members["ml-100k/u.genre"] = members["ml-100k/u.genre"].replace(b"Comedy|5", b"Horror|5")
    write_zip(folder / "ml-100k.zip", members)
    got = hashlib.sha256(members["ml-100k/u.genre"]).hexdigest()
    want = get_spec("ml-100k").checksums["u.genre"]
    before = tree_digest(home)
    proc = _lcer(["prepare", "ml-100k"], home, url)
    _assert_refused(proc, home, before, "checksum mismatch for u.genre", want, got)


def test_every_member_read_has_a_published_digest_where_one_exists(shared_datasets: Path) -> None:
    """ML 100K: every member the parser reads (u.genre included) is checked against the registry."""
    spec = get_spec("ml-100k")
    read = set(spec.files) | set(spec.optional_files)
    assert read == {"u.data", "u.item", "u.genre"} and read <= set(spec.checksums)
    with zipfile.ZipFile(shared_datasets / "ml-100k.zip") as zf:
        for name in read:
            real = hashlib.sha256(zf.read(f"ml-100k/{name}")).hexdigest()
            assert spec.checksums[name] == real


# --------------------------------------------------------------------------- traceable bytes


def _meta_path(home: Path, name: str) -> Path:
    """``meta.json`` of the current preparation (``data/NAME/current`` names its folder)."""
    folder = home / "data" / name
    return folder / (folder / "current").read_text().strip() / "meta.json"


def test_ml1m_without_published_digests_records_the_bytes_it_read(lived_in: Path) -> None:
    """meta.json and DuckDB's datasets row name the archive's and each member's sha256."""
    from lcer_core.store import ResultStore
    from tasks.store import store_dataset

    meta = json.loads(_meta_path(lived_in, "ml-1m").read_text())
    archive = lived_in / "data" / "ml-1m" / "raw" / "ml-1m.zip"
    with zipfile.ZipFile(archive) as zf:
        members = {
            n.rsplit("/", 1)[-1]: hashlib.sha256(zf.read(n)).hexdigest()
            for n in ("ml-1m/ratings.dat", "ml-1m/movies.dat")
        }
    source = meta["source"]
    assert source["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert source["members_sha256"] == members and source["published_sha256"] == []

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCER_HOME", str(lived_in))
        store_dataset.fn("ml-1m")
        with ResultStore() as store:
            row = store.query("SELECT archive_sha256, source_json FROM datasets").rows()
    assert row == [(source["archive_sha256"], json.dumps(source, sort_keys=True))]


def test_a_version_2_database_migrates_to_the_source_columns(tmp_path: Path) -> None:
    from lcer_core.store import ResultStore

    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    assert apply_migrations(con, upto=2) == 0
    con.execute("INSERT INTO datasets (dataset, users) VALUES ('ml-100k', 938)")
    con.close()
    with ResultStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION >= 3
        rows = store.query("SELECT dataset, users, archive_sha256, source_json FROM datasets")
        assert rows.rows() == [("ml-100k", 938, None, None)]


@pytest.mark.slow
def test_trained_model_names_the_archive_it_was_trained_from(
    tmp_path: Path, http_mirror: str
) -> None:
    """``lcer train`` (real Prefect, MLflow, DuckDB): the training run carries the digests."""
    from mlflow.tracking import MlflowClient

    home = tmp_path / "home"
    home.mkdir()
    proc = _lcer(["train", "ml-100k", "--epochs", "1"], home, http_mirror, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(_meta_path(home, "ml-100k").read_text())
    archive = home / "data" / "ml-100k" / "raw" / "ml-100k.zip"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert meta["source"]["archive_sha256"] == digest
    assert meta["source"]["published_sha256"] == ["u.data", "u.genre", "u.item"]
    spec = get_spec("ml-100k")
    assert meta["source"]["members_sha256"] == dict(spec.checksums)

    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ml-100k")
    runs = client.search_runs([exp.experiment_id], "tags.`lcer.kind` = 'train'")
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["data_archive_sha256"] == digest
    assert json.loads(params["data_members_sha256"]) == dict(spec.checksums)

    con = duckdb.connect(str(home / "results" / "lcer.duckdb"), read_only=True)
    try:
        assert con.sql("SELECT dataset, archive_sha256 FROM datasets").fetchall() == [
            ("ml-100k", digest)
        ]
        [(params_json,)] = con.sql("SELECT params_json FROM models").fetchall()
    finally:
        con.close()
    assert json.loads(params_json)["data_archive_sha256"] == digest
