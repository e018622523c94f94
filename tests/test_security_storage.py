"""Objects from the storage URL (issue 23, item 4), attacked for real: whoever can write there
must not crash or fill the reader. Each attack runs in a subprocess under an address-space
limit (polars aborts the whole process when it cannot allocate what a Parquet file declares)
and ends in one line, exit 2, with nothing written.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_fixtures import files_under, run_cli

from lcer_core import remote
from lcer_core.datasets.prepared import PARTS
from lcer_core.errors import InvalidParameterError
from lcer_core.runs import plan_runs

GIB = 1 << 30
ROW_GROUP = 1 << 20
BOMB_ROWS = 600 * ROW_GROUP  # 629,145,600 rows of int64: 5 GB decoded, 3 MB on disk


def _run(
    script: str, *args: str, home: Path, address_space: int, storage_cap: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c SCRIPT ARGS`` on ``home`` under ``address_space`` bytes of address space
    (and ``storage_cap`` as LCER_MAX_STORAGE_BYTES if given)."""
    env = {**os.environ, "LCER_HOME": str(home)}
    env.pop(remote.MAX_OBJECT_BYTES_ENV, None)
    if storage_cap is not None:
        env[remote.MAX_OBJECT_BYTES_ENV] = str(storage_cap)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (address_space,) * 2),
    )


def _assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


#: Reads through the storage path and prints a user-facing error as the CLI does.
_ONE_LINE = """
import sys
from lcer_core.errors import LcerError
try:
    {body}
except LcerError as exc:
    print(f"error: {{exc}}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.fixture(scope="module")
def parquet_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 3 MB Parquet file of 600 row groups of 2^20 zeros: 629 M rows once decoded."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.parquet"
    group = pa.table({"uid": np.zeros(ROW_GROUP, dtype=np.int64)})
    with pq.ParquetWriter(path, group.schema, compression="zstd") as writer:
        for _ in range(BOMB_ROWS // ROW_GROUP):
            writer.write_table(group)
    data = path.read_bytes()
    assert len(data) < 8 << 20
    return data


def test_hostile_shard_from_storage_is_refused_from_its_footer(
    tmp_path: Path, parquet_bomb: bytes
) -> None:
    """A shard file left under the storage URL (the flow copies it home after a deployment's
    workers) that decodes to 629 M rows: refused from its footer, as more rows than its users
    times k, before polars decodes it; no shard file is written. (The cap on bytes read is
    16 MiB here, far above the file's 3 MB.)"""
    home, storage = tmp_path / "home", (tmp_path / "storage").as_uri()
    [spec] = plan_runs(dataset="ml-100k", methods=["fia"], ks=[5], seed=0, n_users=2, model_key="m")
    remote.put_bytes(remote.shard_url(storage, spec.run_id, 0), parquet_bomb)
    body = (
        "from flows.pipeline import _fetch_shards\n    "
        "from lcer_core.runs import plan_runs\n    "
        "[spec] = plan_runs(dataset='ml-100k', methods=['fia'], ks=[5], seed=0, n_users=2, "
        "model_key='m')\n    "
        "_fetch_shards('lcer-explain/lcer-explain', sys.argv[1], spec, [[1, 2]])"
    )
    proc = _run(
        _ONE_LINE.format(body=body), storage, home=home, address_space=3 * GIB, storage_cap=16 << 20
    )
    _assert_one_line(
        proc, f"shard shard-0000.parquet declares {BOMB_ROWS:,} rows, more than the 10 expected"
    )
    assert files_under(home / "work") == []


def test_hostile_bundle_table_is_refused_from_its_footer(
    tmp_path: Path, parquet_bomb: bytes
) -> None:
    """A bundle (what a worker explains from) whose users table decodes to 629 M rows, 5 GB:
    more than the storage cap (1 GiB here), refused before decoding."""
    storage = (tmp_path / "storage").as_uri()
    meta = {"bundle": {"dataset": "ml-100k", "model_key": "m"}}
    bundle = {"model.pt": b"x", "meta.json": json.dumps(meta).encode()}
    bundle |= {f"{t}.parquet": parquet_bomb for t in ("users", "items", *PARTS)}
    base = remote.put_bundle(storage, "m", bundle)
    body = "from lcer_core import remote\n    remote.open_bundle(remote.get_bundle(sys.argv[1]))"
    proc = _run(
        _ONE_LINE.format(body=body), base, home=tmp_path, address_space=3 * GIB, storage_cap=GIB
    )
    _assert_one_line(proc, "users.parquet decodes to about", "more than the 1,073,741,824 allowed")


def test_a_tiny_object_is_read_without_reserving_the_cap(tmp_path: Path) -> None:
    """A 6-byte object under 2 GiB of address space (the cap is 4 GiB): read in chunks."""
    url = f"{(tmp_path / 'storage').as_uri()}/tiny.bin"
    remote.put_bytes(url, b"lcer!\n")
    body = (
        "from lcer_core import remote\n    sys.stdout.buffer.write(remote.get_bytes(sys.argv[1]))"
    )
    proc = _run(_ONE_LINE.format(body=body), url, home=tmp_path, address_space=2 * GIB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "lcer!\n"


def test_non_numeric_storage_cap_is_one_line(
    tmp_path: Path,
    lcer_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = (tmp_path / "storage").as_uri()
    remote.put_bytes(f"{url}/tiny.bin", b"lcer")
    monkeypatch.setenv(remote.MAX_OBJECT_BYTES_ENV, "4G")
    message = "LCER_MAX_STORAGE_BYTES must be a positive number of bytes, got '4G'"
    with pytest.raises(InvalidParameterError, match=message):
        remote.get_bytes(f"{url}/tiny.bin")
    import lcer_core.cli.pipeline  # noqa: F401  (registers run)

    code, out, err = run_cli(["run", "ml-100k", "--storage", url], capsys)
    assert code == 2 and out == "", (code, err)
    assert err.strip() == f"error: {message}"
    assert not (lcer_home / "prefect-home").exists()  # refused before Prefect started
