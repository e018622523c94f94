"""A real two-node Ray cluster on loopback, a real Prefect server, and ``lcer run --runner ray``.

The head node (CPU only) and a worker node that declares one logical GPU (``--num-gpus 1``)
are each started by ``ray start --block`` in a mount namespace of their own where the
flow's folders (its ``LCER_HOME``) and every folder of our packages (the checkout under test,
the environment's installed copy) are an empty folder, with their own working folder and
``LCER_HOME``: as on other machines, they share no filesystem with the flow, and run the code
the flow ships them (Ray's ``runtime_env``). The test
starts them and stops them by their pid (never ``ray stop``). One Ray run: its explanations
equal the thread runner's row for row, LCER's shards ran on the GPU node (DuckDB ``shards``
and the log say so), and the Ray worker running the first LCER shard is killed (SIGKILL,
from outside, by the pid the shard reports): the shard is retried and every row is stored
exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import shared_storage
from test_prefect_e2e import PREFECT, REPO, _free_port, _start, _stop, _tail

from lcer_core.store import ResultStore

pytest.importorskip("prefect_ray")
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LCER = str(BIN / "lcer")
RAY = str(BIN / "ray")
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
ROWS = "select r.method, e.uid, e.rank, e.sid, e.found, e.ce_items, e.ce_importance, e.sufficient, e.necessary, e.rank_after from explanations e join runs r using (run_id) order by 1, 2, 3"


def _can_unshare() -> bool:
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


def _namespaced(cmd: list[str], hidden: list[Path], empty: Path) -> list[str]:
    """``cmd`` in a mount namespace of its own where each folder of ``hidden`` shows the empty
    folder ``empty`` (plain ``cmd`` where this machine cannot make one)."""
    if not _can_unshare():
        return cmd
    script = (
        'e="$1"; n="$2"; shift 2; while [ "$n" -gt 0 ]; do mount --bind "$e" "$1" || exit 1; '
        'shift; n=$((n - 1)); done; exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"] + [
        str(empty),
        str(len(hidden)),
        *map(str, hidden),
        *cmd,
    ]


def _our_code(env: dict[str, str]) -> list[Path]:
    """Every folder of our packages a Python of this environment could import by path: the
    checkout under test and whatever the environment has installed (an editable install's)."""
    found = {REPO / name for name in ("lcer_core", "flows", "tasks")}
    script = "import lcer_core, flows, tasks as t; print(lcer_core.__path__[0]); print(flows.__path__[0]); print(t.__path__[0])"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True
    )
    found |= {Path(line) for line in done.stdout.splitlines() if line.strip()}
    return sorted(p.resolve() for p in found if p.is_dir())


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


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, f"ray head exited:\n{_tail(log)}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        assert time.monotonic() < deadline, f"ray head not listening after 90 s:\n{_tail(log)}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(http_mirror: str, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A Prefect server and two Ray nodes (head: 1 CPU; worker: 1 CPU, 1 logical GPU), and a
    storage URL they reach (a bucket on the session's S3 API server, with credentials in the
    nodes' environment as on a cloud's machines; a folder where moto is not installed)."""
    root = Path(tempfile.mkdtemp(prefix="lcray", dir="/tmp"))  # short: Ray's socket paths
    storage = shared_storage(request, root / "storage", "lcer-ray")
    flow = root / "flow"  # everything of the flow: hidden from both Ray nodes
    empty = root / "empty"
    for folder in (flow, empty, root / "head", root / "worker"):
        folder.mkdir()
    port, api_port = _free_port(), _free_port()
    api = f"http://127.0.0.1:{api_port}/api"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "LCER_", "MLFLOW_", "RAY_"))
    }
    base |= {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        # A loopback cluster of the test's own: no token, whatever ~/.ray/auth_token holds
        # (with one there, the head asks for it and a worker node does not send it).
        "RAY_AUTH_MODE": "disabled",
        "PREFECT_API_URL": api,
    }
    # The nodes see neither the flow's folders nor any copy of our code: the flow ships it
    # through Ray's runtime_env.
    hidden = [flow, *_our_code({**base, "PYTHONPATH": ""})]
    if _can_unshare():
        probe = subprocess.run(
            _namespaced([sys.executable, "-c", "import tasks.explain"], hidden, empty),
            env={**base, "PYTHONPATH": ""}, cwd="/", capture_output=True, text=True,
        )  # fmt: skip
        assert probe.returncode != 0, "a node's Python could still import our code by path"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server_env = {**base, "PREFECT_HOME": str(flow / "prefect-server")}
        procs.append(
            _start(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
                server_env,
                root / "server.log",
            )
        )
        nodes = []
        for name, extra in (
            (
                "head",
                ["--head", "--port", str(port), "--num-gpus", "0", "--include-dashboard", "false"],
            ),
            ("worker", ["--address", f"127.0.0.1:{port}", "--num-gpus", "1"]),
        ):
            node_home = root / name
            env = {
                **base,
                "LCER_HOME": str(node_home / "lcer-home"),
                "PREFECT_HOME": str(node_home / "prefect-home"),
                # The harness's fault (tests/faults/sitecustomize.py), inherited by the
                # node's workers: a remote shard waits 2 s after saying where it runs, so
                # that the test can kill its worker before it finishes.
                "PYTHONPATH": str(REPO / "tests" / "faults"),
                "LCER_FAULT_SLOW_SHARD": "2",
                **storage.env,
            }
            cmd = [
                RAY,
                "start",
                "--block",
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "1",
                "--temp-dir",
                str(node_home / "ray"),
                "--disable-usage-stats",
                *extra,
            ]
            proc = _start(_namespaced(cmd, hidden, empty), env, root / f"{name}.log", cwd=node_home)
            procs.append(proc)
            nodes.append(proc)
            if name == "head":  # the worker node needs the head's GCS
                _wait_port(port, proc, root / "head.log")
        info = _wait_for(f"127.0.0.1:{port}", 2, root, nodes[1], base)
        deadline = time.monotonic() + 90
        import httpx

        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, _tail(root / "server.log")
            time.sleep(0.5)
        yield {
            "address": f"127.0.0.1:{port}",
            "root": root,
            "flow": flow,
            "empty": empty,
            "env": {**base, "LCER_MIRROR": http_mirror},
            "gpu_node": info["gpu_node"],
            "nodes": info["nodes"],
            "storage": storage,
        }
    finally:
        for proc in reversed(procs):
            _stop(proc, grace=30)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for(
    address: str, n: int, root: Path, proc: subprocess.Popen[bytes], env: dict[str, str]
) -> dict[str, Any]:
    """Wait until the cluster has ``n`` live nodes; the node ids and which has the GPU."""
    script = f"""
import json, time, ray
ray.init({address!r}, logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 90
while True:
    alive = [x for x in ray.nodes() if x["Alive"]]
    if len(alive) >= {n} or time.monotonic() > deadline:
        break
    time.sleep(0.5)
gpu = [x["NodeID"] for x in alive if x["Resources"].get("GPU", 0) >= 1]
print(json.dumps({{"nodes": [x["NodeID"] for x in alive], "gpu_node": gpu[0] if gpu else None}}))
"""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "a ray node exited:\n" + "\n".join(
            _tail(p, 2000) for p in sorted(root.glob("*.log"))
        )
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=150
        )
        if done.returncode == 0:
            info = json.loads(done.stdout.strip().splitlines()[-1])
            if len(info["nodes"]) >= n:
                return info
        assert time.monotonic() < deadline, done.stderr[-3000:]
        time.sleep(1)


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
    # The model and data reach the nodes through the storage URL (not Ray's object store).
    storage = cluster["storage"]
    ray_env = {**env, "LCER_HOME": str(ray_home), "LCER_STORAGE": storage.url, **storage.env}
    log = flow / "ray.log"
    args = [LCER, *RUN, "--runner", "ray", "--address", cluster["address"]]
    with log.open("w") as out:
        proc = subprocess.Popen(args, env=ray_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    started = re.compile(r"shard (\d+) of ml-100k/lcer k=5 started on node (\w+) pid (\d+)")
    killed: int | None = None
    shard = ""
    try:
        deadline = time.monotonic() + 240
        while killed is None:
            assert proc.poll() is None, f"lcer run ended before a shard started:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no LCER shard started:\n{_tail(log)}"
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

    # LCER's shards ran on the GPU node; every shard is recorded with its node and device.
    placed = _sql(
        "select r.method, s.shard, s.node, s.device, s.users, s.pairs "
        "from shards s join runs r using (run_id) order by 1, 2",
        ray_env,
    )
    assert len(placed) == 4, placed
    assert {p["node"] for p in placed if p["method"] == "lcer"} == {cluster["gpu_node"]}
    assert {p["node"] for p in placed} <= set(cluster["nodes"])
    assert all(p["device"] in ("cpu", "cuda") and p["pairs"] == 5 for p in placed)
    assert f"started on node {cluster['gpu_node']}" in text
    assert re.search(rf"CEs found on node {cluster['gpu_node']} device \w+", text)

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
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "LCER_", "MLFLOW_", "RAY_"))
    }
    env = {**base, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "LCER_HOME": str(root / "home")}  # fmt: skip
    head = _start(
        [RAY, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
         "--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "false",
         "--temp-dir", str(root / "ray"), "--disable-usage-stats"],
        env,
        root / "head.log",
        cwd=root,
    )  # fmt: skip
    try:
        _wait_port(port, head, root / "head.log")
        done = subprocess.run(
            [LCER, "run", "ml-100k", "--runner", "ray", "--address", f"127.0.0.1:{port}"],
            env={**env, "PREFECT_API_URL": "http://127.0.0.1:9/api", "LCER_MIRROR": http_mirror},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        _stop(head, grace=30)
    try:
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert errors == ["error: the Ray cluster has no CPU (1 node(s), 0 CPUs): every "
                          "explanation task needs one"], done.stderr[-3000:]  # fmt: skip
        assert "Traceback" not in done.stderr
        assert not (root / "home" / "data").exists()  # nothing was prepared
    finally:
        shutil.rmtree(root, ignore_errors=True)
