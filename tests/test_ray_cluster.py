"""A real two-node Ray cluster on loopback, a real Prefect server, and ``lcer run --runner ray``.

The head node (CPU only) and a worker node with two CPUs and one logical GPU
(``--num-gpus 1``), started by :mod:`ray_nodes` and stopped by pid: they see neither the
flow's folders nor any copy of our code (the flow ships it through Ray's ``runtime_env``),
and the model and data reach them through a storage URL (a bucket on the session's S3 API
server). One Ray run with half a GPU per shard (``LCER_RAY_GPUS_PER_SHARD=0.5``): its
explanations equal the thread runner's row for row, every shard ran on the GPU node with GPU
id 0 (DuckDB ``shards`` and the log say so), LCER's two shards ran at once there (their
times in the log; each waits 4 s after starting), and the Ray worker running the first FIA
shard is killed (SIGKILL, from outside, by the pid the shard reports): the shard is retried
and every row is stored exactly once. (A whole GPU per
shard, the default, is ``test_ray_node_death``'s.)
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_nodes import LCER, RAY, clean_env, ray_cluster, stop_node, wait_port
from s3_fixtures import shared_storage
from test_prefect_e2e import REPO, _free_port, _start, _tail

from lcer_core.store import ResultStore

pytest.importorskip("prefect_ray")
pytestmark = pytest.mark.slow

RUN = [
    "run",
    "ml-100k",
    "--methods",
    "lcer,fia",
    "--k",
    "5",
    "--users",
    "2",
    "--steps",
    "60",
    "--shard-size",
    "1",
    "--epochs",
    "2",
]
#: A shard's device on the cluster's logical GPU: the torch device and the GPU id Ray assigned.
GPU_DEVICE = re.compile(r"(cpu|cuda:0) ray-gpu 0")
ROWS = "select r.method, e.uid, e.rank, e.sid, e.found, e.ce_items, e.ce_importance, e.sufficient, e.necessary, e.rank_after from explanations e join runs r using (run_id) order by 1, 2, 3"


def _lcer(args: list[str], env: dict[str, str], log: Path, timeout: float = 300) -> str:
    with log.open("w") as out:
        done = subprocess.run(
            [LCER, *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    text = log.read_text(errors="replace")
    assert done.returncode == 0, f"lcer {' '.join(args)} failed:\n{text[-4000:]}"
    return text


def _sql(query: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of ``query`` on the results database of ``env``'s LCER_HOME (read-only)."""
    store = ResultStore(Path(env["LCER_HOME"]) / "results" / "lcer.duckdb")
    return store.query(query).to_dicts()


@pytest.fixture(scope="module")
def cluster(http_mirror: str, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A Prefect server and two Ray nodes (head: 1 CPU; worker: 2 CPUs, 1 logical GPU), and a
    storage URL they reach (a bucket on the session's S3 API server, with credentials in the
    nodes' environment as on a cloud's machines; a folder where moto is not installed)."""
    with tempfile.TemporaryDirectory(prefix="lcs3", dir="/tmp") as folder:
        storage = shared_storage(request, Path(folder), "lcer-ray")
        with ray_cluster(
            "lcray", http_mirror, worker_cpus=2, slow_shard_s=4, storage=storage
        ) as info:
            yield {**info, "storage": storage}


def _spans(log: str) -> dict[tuple[str, int, int], list[float]]:
    """When each shard attempt ran by the log: (method, shard, worker pid) → [start, end] in
    seconds of the day, from its ``started on node`` and ``CEs found`` lines (Ray prefixes a
    worker's lines with its pid; the task's own lines carry their time)."""
    line_re = re.compile(
        r"pid=(\d+)\).*?(\d\d):(\d\d):(\d\d\.\d+) \|.*shard (\d+) of ml-100k/(\w+) k=5"
        r"( started on node|: .* CEs found on node)"
    )
    spans: dict[tuple[str, int, int], list[float]] = {}
    for m in line_re.finditer(log):
        pid, hh, mm, ss, shard, method, what = m.groups()
        at = int(hh) * 3600 + int(mm) * 60 + float(ss)
        span = spans.setdefault((method, int(shard), int(pid)), [at, math.inf])
        if "CEs found" in what:
            span[1] = at
    return spans


def test_ray_cluster_matches_threads_and_survives_a_killed_worker(
    cluster: dict[str, Any],
) -> None:
    flow = cluster["flow"]
    threads_home, ray_home = flow / "threads", flow / "ray"
    env = {**cluster["env"], "LCER_HOME": str(threads_home)}
    _lcer(RUN, env, flow / "threads.log")
    expected = _sql(ROWS, env)
    assert len(expected) == 2 * 2 * 5  # two methods, two users, five items

    # The Ray run starts from the same prepared data and model (the flow's, not the workers').
    for part in ("data", "models"):
        shutil.copytree(threads_home / part, ray_home / part)
    # Half a GPU per shard: the worker node (2 CPUs, 1 GPU) runs two shards at once. The model
    # and data reach the nodes through the storage URL (not Ray's object store).
    storage = cluster["storage"]
    ray_env = {**env, "LCER_HOME": str(ray_home), "LCER_RAY_GPUS_PER_SHARD": "0.5",
               "LCER_STORAGE": storage.url, **storage.env}  # fmt: skip
    log = flow / "ray.log"
    args = [LCER, *RUN, "--runner", "ray", "--address", cluster["address"]]
    with log.open("w") as out:
        proc = subprocess.Popen(args, env=ray_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    started = re.compile(r"shard (\d+) of ml-100k/fia k=5 started on node (\w+) pid (\d+)")
    killed: int | None = None
    shard = ""
    try:
        deadline = time.monotonic() + 240
        while killed is None:
            assert proc.poll() is None, f"lcer run ended before a shard started:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no FIA shard started:\n{_tail(log)}"
            hit = started.search(log.read_text(errors="replace"))
            if hit:
                shard, killed = hit.group(1), int(hit.group(3))
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        assert proc.wait(timeout=300) == 0, _tail(log, 6000)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")

    # Row for row what the thread runner stored, each row once.
    assert _sql(ROWS, ray_env) == expected
    counts = _sql(
        "select count(*) as n, count(distinct (run_id, uid, sid)) as d from explanations", ray_env
    )
    assert counts == [{"n": 20, "d": 20}]

    # The killed shard ran again, in another worker process.
    attempts = [m for m in started.finditer(text) if m.group(1) == shard]
    assert len(attempts) >= 2 and int(attempts[-1].group(3)) != killed, text[-4000:]

    # Every shard (LCER's and the baseline's) ran on the GPU node, and is recorded with its node
    # and device: the torch device (the CPU here: the GPU is logical) and the GPU Ray gave it.
    placed = _sql(
        "select r.method, s.shard, s.node, s.device, s.users, s.pairs "
        "from shards s join runs r using (run_id) order by 1, 2",
        ray_env,
    )
    assert len(placed) == 4, placed
    assert {p["node"] for p in placed} == {cluster["gpu_node"]}
    assert all(GPU_DEVICE.fullmatch(p["device"]) and p["pairs"] == 5 for p in placed), placed
    assert f"started on node {cluster['gpu_node']}" in text
    assert re.search(rf"CEs found on node {cluster['gpu_node']} device \w+", text)
    # ... LCER's two shards at once (on the one GPU: both got GPU id 0), in two workers.
    lcer = {key: span for key, span in _spans(text).items() if key[0] == "lcer"}
    assert sorted(shard for _, shard, _ in lcer) == [0, 1], (lcer, text[-4000:])
    (a, b) = lcer.values()
    assert max(a[0], b[0]) < min(a[1], b[1]), f"LCER's shards did not overlap: {lcer}"

    assert "model and data through the storage URL" in text
    assert storage.objects("bundles") != []

    # The thread runner records where its shards ran too (this host).
    local = _sql("select distinct node from shards", env)
    assert [row["node"] for row in local] == [os.uname().nodename]

    # Neither Ray node saw or wrote the flow's folders: the empty folder stands in for them.
    assert list(cluster["empty"].iterdir()) == []


def test_a_cluster_without_cpus_is_refused_in_one_line(http_mirror: str) -> None:
    """A head node with no CPU (and no worker node): ``lcer run`` says what is missing and
    exits 2 before the flow starts, instead of waiting for a CPU that never comes."""
    root = Path(tempfile.mkdtemp(prefix="lcray", dir="/tmp"))
    port = _free_port()
    env = {**clean_env(), "RAY_USAGE_STATS_ENABLED": "0", "LCER_HOME": str(root / "home")}
    head = _start(
        [RAY, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
         "--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "false",
         "--temp-dir", str(root / "ray"), "--disable-usage-stats"],
        env,
        root / "head.log",
        cwd=root,
    )  # fmt: skip
    try:
        wait_port(port, head, root / "head.log")
        done = subprocess.run(
            [LCER, "run", "ml-100k", "--runner", "ray", "--address", f"127.0.0.1:{port}"],
            env={**env, "PREFECT_API_URL": "http://127.0.0.1:9/api", "LCER_MIRROR": http_mirror},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        stop_node(head)
    try:
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert errors == ["error: the Ray cluster has no CPU (1 node(s), 0 CPUs): every "
                          "explanation task needs one"], done.stderr[-3000:]  # fmt: skip
        assert "Traceback" not in done.stderr
        assert not (root / "home" / "data").exists()  # nothing was prepared
    finally:
        shutil.rmtree(root, ignore_errors=True)
