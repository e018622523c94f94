"""What travels to workers that share no filesystem with the flow (bundles, a storage URL), and
the one-line refusals of a Ray address, a cluster or a storage URL that cannot serve."""

from __future__ import annotations

import socket
from pathlib import Path

import polars as pl
import pytest

from lcer_core import models, remote, shards
from lcer_core.datasets import load_prepared
from lcer_core.errors import InvalidParameterError, MissingDataError, StorageError
from lcer_core.fsio import parquet_bytes
from lcer_core.runs import run_spec


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_bundle_explains_exactly_like_lcer_home(in_trained_home: Path) -> None:
    data = load_prepared("ml-100k")
    model = models.load_model("ml-100k")
    users = data.users_of("test")[:3]
    spec = run_spec(dataset="ml-100k", method="lcer", k=5, alpha=0.1, lam=0.01, steps=30,
                           seed=0, n_users=3, model_key=model.key)  # fmt: skip
    here = shards.explain_users(data, model, spec, users, device="cpu")

    bundle = remote.make_bundle(data, model, users)
    assert all(isinstance(v, bytes) for v in bundle.values())
    # Only the users' own interactions travel, not the dataset's.
    sent = (
        pl.read_parquet(bundle["train.parquet"]).height
        + pl.read_parquet(bundle["test_tr.parquet"]).height
    )
    assert 0 < sent < data.part("train").height
    data2, model2 = remote.open_bundle(bundle)
    assert model2.key == model.key
    there = shards.explain_users(data2, model2, spec, users, device="cpu")
    timing = [c for c in here.columns if c.endswith("_s")]  # seconds differ run to run
    assert there.drop(timing).equals(here.drop(timing))

    with pytest.raises(MissingDataError, match="lack model.pt"):
        remote.open_bundle({k: v for k, v in bundle.items() if k != "model.pt"})
    with pytest.raises(MissingDataError, match="cannot be read"):
        remote.open_bundle({**bundle, "model.pt": b"not a checkpoint"})


def test_storage_url_round_trip(tmp_path: Path) -> None:
    url = remote.check_storage((tmp_path / "store").as_uri() + "/")
    assert url == (tmp_path / "store").as_uri()
    base = remote.put_bundle(url, "key", {"model.pt": b"m", "meta.json": b"{}"})
    assert remote.get_bytes(f"{base}/model.pt") == b"m"
    assert not list((tmp_path / "store").rglob(".tmp-*")) and not list(
        (tmp_path / "store").glob(".lcer-probe-*")
    )
    assert remote.shard_url(url, "r1", 3).endswith("/work/r1/shard-0003.parquet")
    with pytest.raises(StorageError, match="cannot read"):
        remote.get_bytes(f"{url}/nothing-here")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/no/scheme", "has no scheme"),
        ("nosuchproto://x/y", "has an unknown protocol nosuchproto://"),
        ("memory://lcer", "lives in this process only"),
        ("hdfs://127.0.0.1:9/lcer", "storage URL 'hdfs://127.0.0.1:9/lcer' cannot be used"),
        ("file:///proc/lcer-storage", "cannot write file:///proc/lcer-storage"),
    ],
)
def test_unusable_storage_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message) as info:
        remote.check_storage(url)
    assert "\n" not in str(info.value)


def test_missing_cluster_resources_are_named() -> None:
    from flows.runner import missing_resources

    head = {"Alive": True, "Resources": {"CPU": 2.0}}
    gpu_node = {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}}
    gpu_only = {"Alive": True, "Resources": {"GPU": 1.0}}
    dead = {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}}
    assert missing_resources([head, gpu_node], gpu_tasks=True) is None
    assert missing_resources([head], gpu_tasks=False) is None
    assert "no CPU" in (missing_resources([{"Alive": True, "Resources": {}}], False) or "")
    assert "no CPU" in (missing_resources([gpu_only, dead], False) or "")
    assert "both a GPU and a CPU" in (missing_resources([head, gpu_only], True) or "")
    assert "no live node" in (missing_resources([dead], False) or "")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runner", "ray", "--address", "127.0.0.1:{port}"], "cannot reach the Ray cluster at"),
        (["--runner", "ray", "--address", "no-port-here"], "--address must be HOST:PORT"),
        (["--storage", "file:///proc/lcer-storage"], "cannot write file:///proc/lcer-storage"),
        (["--storage", "bucket/without/scheme"], "has no scheme"),
    ],
)
def test_run_refuses_bad_cluster_options_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], lcer_home: Path
) -> None:
    import lcer_core.cli.pipeline  # noqa: F401  (registers run)
    from lcer_core.cli import main

    argv = [a.replace("{port}", str(_closed_port())) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "ml-100k", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err, err
    assert len(err.splitlines()) == 1
    assert not (lcer_home / "prefect-home").exists()  # refused before Prefect started


def test_check_address_accepts_a_listening_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        remote.check_address(f"127.0.0.1:{s.getsockname()[1]}")
    with pytest.raises(InvalidParameterError, match="HOST:PORT"):
        remote.check_address("127.0.0.1:99999")


def test_storage_objects_over_the_cap_are_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write the storage URL cannot fill the reader's memory."""
    url = f"file://{tmp_path}"
    remote.put_bytes(f"{url}/big.bin", b"x" * 2048)
    monkeypatch.setenv(remote.MAX_OBJECT_BYTES_ENV, "1024")
    with pytest.raises(StorageError, match="more than the 1,024 allowed"):
        remote.get_bytes(f"{url}/big.bin")
    monkeypatch.setenv(remote.MAX_OBJECT_BYTES_ENV, "2048")
    assert remote.get_bytes(f"{url}/big.bin") == b"x" * 2048


@pytest.mark.parametrize(
    "tail",
    ["http://127.0.0.1:8765/bundles/m", "file:///elsewhere/bundles/m", "{s}/bundles/../work",
     "{s}/bundles/m/../../x", "{s}/bundles/", "{s}/bundlesm", "{s}/bundles/.m", "{s}/work/m"],
)  # fmt: skip
def test_bundle_urls_outside_the_workers_storage_are_refused(tmp_path: Path, tail: str) -> None:
    storage = (tmp_path / "store").as_uri()
    assert remote.bundle_base(storage, f"{storage}/bundles/m-1") == f"{storage}/bundles/m-1"
    with pytest.raises(InvalidParameterError, match="is not a bundle under") as info:
        remote.bundle_base(storage, tail.format(s=storage))
    assert "\n" not in str(info.value)


def test_a_worker_takes_its_storage_from_its_own_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(remote.STORAGE_ENV, raising=False)
    with pytest.raises(StorageError, match="has no storage URL"):
        remote.worker_storage("file:///anything")
    own = (tmp_path / "store").as_uri()
    monkeypatch.setenv(remote.STORAGE_ENV, own + "/")
    assert remote.worker_storage() == own == remote.worker_storage(own + "/")
    with pytest.raises(InvalidParameterError, match="is not this worker's storage URL"):
        remote.worker_storage((tmp_path / "elsewhere").as_uri())


@pytest.mark.parametrize(
    ("field", "value"),
    [("dataset", "../x"), ("dataset", "a/b"), ("dataset", ""), ("model_key", "../../../x"),
     ("model_key", ".."), ("model_key", "/abs"), ("model_key", "m\n")],
)  # fmt: skip
def test_names_that_become_paths_are_checked(field: str, value: str) -> None:
    fields = {"dataset": "ml-100k", "model_key": "m1", field: value}
    with pytest.raises(InvalidParameterError, match=f"invalid {field}") as info:
        run_spec(method="fia", k=5, seed=0, n_users=None, **fields)
    assert "\n" not in str(info.value)


def test_a_bundle_or_shard_with_other_digests_is_refused(in_trained_home: Path) -> None:
    data, model = load_prepared("ml-100k"), models.load_model("ml-100k")
    bundle = remote.make_bundle(data, model, data.users_of("test")[:2])
    digests = remote.bundle_digests(bundle)
    assert remote.check_bundle(bundle, "r", digests) == digests
    other = {**bundle, "users.parquet": bundle["items.parquet"]}
    with pytest.raises(InvalidParameterError, match="holds another data than run r"):
        remote.check_bundle(other, "r", digests)
    with pytest.raises(InvalidParameterError, match="carries no model_digest"):
        remote.check_bundle(bundle, "r", None)
    frame = pl.DataFrame({"uid": [1]})
    stamped = parquet_bytes(frame, dict(zip(remote.SHARD_DIGEST_FIELDS, digests, strict=True)))
    remote.check_shard_digests(stamped, "shard-0000.parquet", "r", digests)
    for data_ in (parquet_bytes(frame), stamped):
        with pytest.raises(InvalidParameterError, match="holds another model than run r"):
            remote.check_shard_digests(data_, "shard-0000.parquet", "r", ("0" * 64, digests[1]))
