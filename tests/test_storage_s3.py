"""``LCER_STORAGE=s3://...`` against a real S3 API server (moto's, ``tests/s3_fixtures.py``):
bundles and shard files travel through it, storage options come from ``LCER_STORAGE_OPTIONS``,
and every way it cannot serve (no extra, no credentials, wrong ones, no bucket, a bucket that
refuses writes) is one line, exit 2, before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_fixtures import UNKNOWN_KEYS, S3Server

from lcer_core import remote
from lcer_core.datasets.prepared import PARTS
from lcer_core.errors import StorageError

REPO = Path(__file__).resolve().parents[1]


def _use(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process as an S3 client with exactly ``env``'s AWS settings (and new s3fs
    instances: fsspec caches them by their arguments, not by the environment)."""
    import s3fs

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(remote.STORAGE_OPTIONS_ENV, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture()
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The session's S3 server, this process signing as its ``writer``."""
    import s3fs

    _use(monkeypatch, s3_server.env("writer"))
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()


def test_bundles_and_shards_travel_through_s3(s3: S3Server) -> None:
    url = remote.check_storage(s3.bucket("lcer-trip") + "/team/")
    assert url == "s3://lcer-trip/team"
    bundle = {name: os.urandom(32) for name in ("meta.json", "model.pt")}
    bundle |= {f"{t}.parquet": os.urandom(32) for t in ("users", "items", *PARTS)}
    bundle["model.pt"] = os.urandom(3 << 20)  # read back in several chunks
    base = remote.put_bundle(url, "m-1", bundle)
    assert base == "s3://lcer-trip/team/bundles/m-1" == remote.bundle_base(url, base)
    assert remote.get_bundle(base) == bundle
    shard = remote.shard_url(url, "run-1", 0)
    remote.put_bytes(shard, b"shard bytes")
    assert remote.get_bytes(shard) == b"shard bytes" == s3.read(shard)
    # What was written and nothing else: no probe left, no temporary object.
    assert s3.objects(url) == sorted(
        [*(f"bundles/m-1/{n}" for n in bundle), "work/run-1/shard-0000.parquet"]
    )
    with pytest.raises(StorageError, match=r"^cannot read s3://lcer-trip/team/none: "):
        remote.get_bytes(f"{url}/none")


def test_storage_options_come_from_lcer_storage_options(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.bucket("lcer-options")
    # The environment names no server; the options do.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv(remote.STORAGE_OPTIONS_ENV, json.dumps({"endpoint_url": s3.endpoint}))
    assert remote.check_storage(bucket) == bucket
    for text, message in (("[1]", "must be a JSON object"), ('{"key": ', "is not JSON")):
        monkeypatch.setenv(remote.STORAGE_OPTIONS_ENV, text)
        with pytest.raises(StorageError, match=message) as info:
            remote.check_storage(bucket)
        assert '"key"' not in str(info.value)  # options may hold secrets: never repeated


@pytest.mark.parametrize(
    ("who", "bucket", "message"),
    [
        ("unknown keys", "lcer-faults", "The AWS Access Key Id you provided does not exist"),
        ("wrong secret", "lcer-faults", "The request signature we calculated does not match"),
        ("no keys", "lcer-faults", "Unable to locate credentials (set AWS_ACCESS_KEY_ID and"),
        ("writer", "lcer-no-such-bucket", "The specified bucket does not exist"),
        ("reader", "lcer-faults", "Access Denied"),
        ("dropbox", "lcer-faults", "Forbidden"),
    ],
)
def test_storage_that_cannot_serve_is_one_line_before_any_work(
    who: str,
    bucket: str,
    message: str,
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    lcer_home: Path,
) -> None:
    import lcer_core.cli.pipeline  # noqa: F401  (registers run)
    from lcer_core.cli import main

    s3.bucket("lcer-faults")
    keys = {
        "unknown keys": UNKNOWN_KEYS,
        "wrong secret": (s3.keys["writer"][0], "wrong"),
        "no keys": None,
    }
    env = s3.env(None, keys[who]) if who in keys else s3.env(who)
    _use(monkeypatch, env)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "ml-100k", "--storage", f"s3://{bucket}/lcer"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    verb = "read" if who == "dropbox" else "write"  # written, then not readable
    assert err.startswith(f"error: cannot {verb} s3://{bucket}/lcer/.lcer-probe-"), err
    assert message in err and len(err.splitlines()) == 1, err
    assert not (lcer_home / "prefect-home").exists()  # refused before Prefect started
    assert s3.objects("s3://lcer-faults") == []  # no probe left behind
    assert "lcer-no-such-bucket" not in s3.buckets()  # a missing bucket is not made


HIDDEN = """
import sys
sys.modules["s3fs"] = sys.modules["gcsfs"] = None  # as if neither extra were installed
from lcer_core import remote
from lcer_core.datasets.prepared import PARTS
from lcer_core.errors import StorageError
try:
    remote.check_storage("gs://bucket/lcer")
except StorageError as exc:
    print(exc)
import lcer_core.cli.pipeline
from lcer_core.cli import main
main(["run", "ml-100k", "--storage", "s3://bucket/lcer"])
"""


def test_object_storage_without_its_extra_is_one_line(lcer_home: Path) -> None:
    """Without s3fs (gcsfs) an ``s3://`` (``gs://``) URL names the extra to install."""
    env = {**os.environ, "LCER_HOME": str(lcer_home)}
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.startswith(
        "storage URL 'gs://bucket/lcer' needs gcsfs (install lcer[gcs]: pip install 'lcer[gcs]')"
    ), done.stdout
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr.strip()
    assert err.startswith(
        "error: storage URL 's3://bucket/lcer' needs s3fs (install lcer[s3]: pip install 'lcer[s3]')"
    ), err
    assert len(err.splitlines()) == 1
    assert not (lcer_home / "prefect-home").exists()
