"""The ``lcer-explain`` flow called for real with forged parameters (issue 23, item 2).

Whoever can create a flow run chooses its parameters. Each test calls the real flow (under a
temporary Prefect server) the way such a caller would, and checks that the forgery is refused
in one line before anything is fetched or written, and that nothing lands outside the
worker's configured storage (``LCER_STORAGE``). The worker's ``LCER_HOME`` is its own, empty
folder, as on a ``gpu`` pool that shares no filesystem with the pipeline.
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lcer_core import models, remote
from lcer_core.code_version import code_version
from lcer_core.datasets import load_prepared
from lcer_core.errors import LcerError
from lcer_core.explainers import get_method
from lcer_core.keys import run_key
from lcer_core.runs import RunSpec, run_spec

pytestmark = pytest.mark.slow

K, N_USERS = 5, 2


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LCER_TASK_RUNNER", raising=False)
        mp.delenv("LCER_STORAGE", raising=False)
        with prefect_test_harness(server_startup_timeout=90):
            yield


class Setup:
    """A legitimate run bound to its bundle under the storage URL, and where everything lives."""

    def __init__(self, root: Path, trained_home: Path) -> None:
        self.root = root
        self.storage_dir = root / "storage"
        self.storage = self.storage_dir.as_uri()
        self.worker_home = root / "worker-home"
        self.pipeline_home = root / "pipeline-home"
        self.worker_home.mkdir()
        self.pipeline_home.mkdir()
        self.data = load_prepared("ml-100k")  # from the trained home (LCER_HOME set by the caller)
        self.model = models.load_model("ml-100k")
        self.users = [int(u) for u in self.data.users_of("test")[:N_USERS]]
        self.spec = run_spec(dataset="ml-100k", method="fia", k=K, seed=0, n_users=N_USERS,
                             model_key=self.model.key)  # fmt: skip
        bundle = remote.make_bundle(self.data, self.model, self.users)
        self.url = remote.put_bundle(self.storage, f"{self.model.key}-ok", bundle)
        model_digest, data_digest = remote.bundle_digests(bundle)
        #: What the pipeline sends: the run bound to its bundle (digests beside its fields).
        self.payload = {
            **self.spec.to_payload(),
            "model_digest": model_digest,
            "data_digest": data_digest,
        }
        self.bound = RunSpec.from_payload(self.payload)

    def params(self, **changes: Any) -> dict[str, Any]:
        """The legitimate flow parameters (as the pipeline sends them), with ``changes``."""
        return {
            "specs": [self.payload],
            "users": self.users,
            "shard_size": N_USERS,
            "storage": self.storage,
            "bundles": {self.model.key: self.url},
        } | changes

    def evil_bundle(self) -> dict[str, bytes]:
        """Another model (weights negated) whose bundle claims to be the legitimate model."""
        evil = models.model_from_bytes(models.model_bytes(self.model), "ml-100k", self.model.key)
        with torch.no_grad():
            for p in evil.module.parameters():
                p.neg_()
        return remote.make_bundle(self.data, evil, self.users)

    def files_outside_storage(self) -> set[Path]:
        return {
            p for p in self.root.rglob("*") if self.storage_dir not in p.parents and p.is_file()
        }


@pytest.fixture()
def setup(
    harness: None, trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Setup:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LCER_HOME", str(trained_home))
    made = Setup(tmp_path, trained_home)
    # From here on this process is the gpu pool's worker: its own home, its own storage URL.
    monkeypatch.setenv("LCER_HOME", str(made.worker_home))
    monkeypatch.setenv("LCER_STORAGE", made.storage)
    return made


def _explain(**params: Any) -> Any:
    """The flow called as the pipeline calls it: with the pipeline's code version."""
    from flows.explain import lcer_explain

    params.setdefault("code_version", code_version())
    return lcer_explain(**params, return_state=True)


def _refused(state: Any, needle: str) -> str:
    """The one-line error of a flow run that failed on a forgery."""
    assert state.is_failed(), f"the forged flow run ended {state.name}: {state.message}"
    with pytest.raises(LcerError) as info:
        state.result()
    message = str(info.value)
    assert needle in message and "\n" not in message, message
    return message


def _forged_payload(setup: Setup, **fields: Any) -> dict[str, Any]:
    """The legitimate run's payload with ``fields`` changed and its run_id recomputed to match."""
    payload = {**setup.spec.to_payload(), **fields}
    method = get_method(payload["method"]).config_type(**payload["config"])
    payload["run_id"] = run_key(
        dataset=payload["dataset"], method=payload["method"], k=payload["k"], alpha=None,
        lam=None, steps=None, seed=payload["seed"], model_version=payload["model_key"],
        n_users=payload["n_users"], extra=method.non_default(),
    )  # fmt: skip
    return payload


def test_the_legitimate_call_explains_under_the_storage_url(setup: Setup) -> None:
    state = _explain(**setup.params())
    assert state.is_completed(), state.message
    [[url]] = state.result()
    assert url == remote.shard_url(setup.storage, setup.spec.run_id, 0)
    assert not setup.files_outside_storage()


def test_an_amortised_run_explains_from_the_network_in_its_bundle(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's home holds no explainer network: the one the pipeline put in the bundle
    explains the shard, with the rows it gives here."""
    import polars as pl

    from lcer_core import amortised_store, shards
    from lcer_core.explainers.amortised import AmortisedConfig, AmortisedTraining

    small = AmortisedTraining(epochs=1, batch=64, max_pairs=100, dim=4, hidden=8)
    rec = setup.model.recommender("cpu")
    key = amortised_store.train_network(rec, setup.data, setup.model.key, K, small, save=False)
    spec = run_spec(dataset="ml-100k", method="amortised", k=K, seed=0, n_users=N_USERS,
                    model_key=setup.model.key, config=AmortisedConfig(network=key))  # fmt: skip
    here = shards.explain_users(setup.data, setup.model, spec, setup.users, device="cpu")
    bundle = remote.make_bundle(setup.data, setup.model, setup.users, [key])
    url = remote.put_bundle(setup.storage, f"{setup.model.key}-net", bundle)
    monkeypatch.setattr(amortised_store, "_MEMORY", {})  # the worker knows no network
    digests = remote.bundle_digests(bundle)
    payload = dict(zip(("model_digest", "data_digest"), digests, strict=True))
    state = _explain(
        **setup.params(specs=[spec.to_payload() | payload], bundles={setup.model.key: url})
    )
    assert state.is_completed(), state.message
    [[shard]] = state.result()
    there = pl.read_parquet(remote.get_bytes(shard)).select(here.columns)
    timing = [c for c in here.columns if c.endswith("_s")]
    assert there.drop(timing).equals(here.drop(timing))
    assert not any(setup.worker_home.rglob("network.pt"))


def test_a_storage_parameter_elsewhere_is_refused(setup: Setup) -> None:
    elsewhere = setup.root / "elsewhere"
    state = _explain(**setup.params(storage=elsewhere.as_uri()))
    _refused(state, "is not this worker's storage URL")
    assert not elsewhere.exists()
    assert not setup.files_outside_storage()


def test_a_foreign_bundle_url_is_refused(setup: Setup) -> None:
    """The legitimate run's payload with a bundle of the caller's own (another model that
    claims the legitimate model's key), uploaded to a place of theirs."""
    theirs = (setup.root / "theirs").as_uri()
    url = remote.put_bundle(theirs, "evil", setup.evil_bundle())
    before = setup.files_outside_storage()
    state = _explain(**setup.params(bundles={setup.model.key: url}))
    _refused(state, "is not a bundle under this worker's storage URL")
    assert setup.files_outside_storage() == before
    assert not (setup.storage_dir / "work").exists()


def test_a_foreign_bundle_under_the_storage_url_is_refused_by_its_digests(setup: Setup) -> None:
    url = remote.put_bundle(setup.storage, "evil", setup.evil_bundle())
    state = _explain(**setup.params(bundles={setup.model.key: url}))
    _refused(state, "holds another model than run")
    assert not (setup.storage_dir / "work").exists()
    assert not setup.files_outside_storage()


def test_a_loopback_bundle_url_is_never_requested(setup: Setup) -> None:
    requests: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            requests.append(self.path)
            self.send_error(404)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/admin/bundle"
        state = _explain(**setup.params(bundles={setup.model.key: url}))
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []
    _refused(state, "is not a bundle under this worker's storage URL")
    assert not setup.files_outside_storage()


def test_a_model_key_outside_lcer_home_is_refused(setup: Setup, trained_home: Path) -> None:
    """Shared-home mode (no bundles): ``models/ml-100k/../../../x`` is a folder beside LCER_HOME,
    where the caller has put a model of their choosing."""
    shutil.copytree(trained_home / "data", setup.worker_home / "data", symlinks=True)
    (setup.worker_home / "models" / "ml-100k").mkdir(parents=True)  # a worker that has models
    planted = setup.root / "x" / "model.pt"
    planted.parent.mkdir()
    planted.write_bytes(models.model_bytes(setup.model))
    payload = _forged_payload(setup, model_key="../../../x")
    before = setup.files_outside_storage()
    state = _explain(specs=[payload], users=setup.users, shard_size=N_USERS)
    _refused(state, "invalid model_key '../../../x'")
    assert setup.files_outside_storage() == before
    assert not (setup.worker_home / "work").exists()


@pytest.mark.parametrize("dataset", ["../../x", "ml-100k/../../x", ".hidden", ""])
def test_a_dataset_name_that_is_no_name_is_refused(setup: Setup, dataset: str) -> None:
    payload = _forged_payload(setup, dataset=dataset)
    for params in (
        {"specs": [payload], "users": setup.users, "shard_size": N_USERS},
        setup.params(specs=[{**setup.payload, **payload}]),
    ):
        before = setup.files_outside_storage()
        _refused(_explain(**params), f"invalid dataset {dataset!r}")
        assert setup.files_outside_storage() == before
    assert not (setup.storage_dir / "work").exists()


def test_a_shard_from_another_model_is_not_stored(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller binds the legitimate run to their own bundle (in the storage URL): the worker
    explains it, but the pipeline, whose run is bound to its own bundle, refuses the shards."""
    from flows.pipeline import _fetch_shards

    evil = setup.evil_bundle()
    url = remote.put_bundle(setup.storage, "evil", evil)
    model_digest, data_digest = remote.bundle_digests(evil)
    forged = {**setup.spec.to_payload(), "model_digest": model_digest, "data_digest": data_digest}
    state = _explain(**setup.params(specs=[forged], bundles={setup.model.key: url}))
    assert state.is_completed(), state.message  # the worker explained the caller's model
    monkeypatch.setenv("LCER_HOME", str(setup.pipeline_home))
    with pytest.raises(LcerError) as info:
        _fetch_shards("lcer-explain", setup.storage, setup.bound, [setup.users])
    message = str(info.value)
    assert "holds another model than run" in message and "not stored" in message, message
    assert "\n" not in message
    assert not list(setup.pipeline_home.rglob("shard-*.parquet"))


def test_a_run_bound_to_no_bundle_is_refused(setup: Setup) -> None:
    state = _explain(**setup.params(specs=[setup.spec.to_payload()]))
    _refused(state, "carries no model_digest and data_digest")
    assert not (setup.storage_dir / "work").exists()


def test_digests_are_no_part_of_the_run_key(setup: Setup) -> None:
    assert setup.bound.digests == (setup.payload["model_digest"], setup.payload["data_digest"])
    assert setup.bound.run_id == setup.spec.run_id
    assert setup.bound.key_fields() == setup.spec.key_fields()
    assert setup.bound.to_payload() == setup.payload
    assert "model_digest" not in setup.spec.to_payload()  # an unbound run's payload as before


def test_a_run_deployed_with_other_code_is_refused(setup: Setup) -> None:
    """A pipeline of another commit (or a worker with another lcer installed): one line, before
    anything is fetched or written."""
    other = "0.1.0+src.000000000000"
    message = _refused(_explain(**setup.params(code_version=other)), "the run was deployed with")
    assert message.startswith(f"this worker runs lcer {code_version()}, ") and other in message
    assert "does not say which code" in _refused(_explain(**setup.params(code_version=None)), "")
    assert not (setup.storage_dir / "work").exists()
    assert not setup.files_outside_storage()


def test_a_rerun_explains_only_the_shards_missing_under_the_storage_url(setup: Setup) -> None:
    """Each shard is left under the storage URL as it finishes; the same flow run again skips the
    complete ones (same file, same mtime) and explains the others."""
    params = setup.params(shard_size=1)
    state = _explain(**params)
    assert state.is_completed(), state.message
    urls = [u for run in state.result() for u in run]
    files = [Path(u.removeprefix("file://")) for u in urls]
    assert len(files) == N_USERS and all(f.is_file() for f in files)
    kept = files[0].stat().st_mtime_ns
    files[1].unlink()  # as if the worker had died before this shard finished
    again = _explain(**params)
    assert again.is_completed(), again.message
    assert files[0].stat().st_mtime_ns == kept and files[1].is_file()
    done = _task_runs(again)
    assert [r.name[-4:] for r in done] == ["0001"], [r.name for r in done]
    assert not setup.files_outside_storage()


def _task_runs(state: Any) -> list[Any]:
    """The explanation task runs of the flow run that ended in ``state``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    return [r for r in runs if r.name.startswith("explain-")]
