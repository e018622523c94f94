"""A Ray node that dies under a shard: the run is bounded, says which node and shards, keeps what
finished, and the same command resumes.

A real two-node cluster on loopback (head: 1 CPU; worker: 1 CPU and one logical GPU, so
LCER's shards ask for ``num_gpus=1`` and go there) and a real Prefect server, as in
``test_ray_cluster``. Once one LCER shard has finished on the GPU node and the next has
started there (slowed by the harness's fault hook), every process of that node (its raylet,
its workers) is killed by pid. No live node has a GPU any more: instead of waiting forever,
``lcer run`` ends within the grace period (``LCER_RAY_NODE_GRACE_S``) plus Ray's detection,
exit 2, one line naming the node and the shard; FIA's run and LCER's finished shard are kept,
and running the same command again explains only the missing shard (on the head's CPU).
"""

from __future__ import annotations

import contextlib
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

import psutil
import pytest
from test_prefect_e2e import PREFECT, REPO, _free_port, _start, _stop, _tail
from test_ray_cluster import LCER, RAY, RUN, _namespaced, _sql, _wait_for, _wait_port

from flows.runner import ShardsStranded, fits_some_node, node_grace_s, placement_resources
from lcer_core.errors import InvalidParameterError

GRACE_S = 5


def _node(node_id: str, alive: bool, **resources: float) -> dict[str, Any]:
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "10.0.0.1",
            "Resources": resources}  # fmt: skip


def test_a_shard_fits_only_a_live_node_with_all_it_needs(monkeypatch) -> None:
    gpu, cpu = placement_resources("ray-gpu"), placement_resources("ray")
    assert gpu == {"CPU": 1.0, "GPU": 1.0} and cpu == {"CPU": 1.0}
    dead_gpu, head = _node("a", False, CPU=1, GPU=1), _node("b", True, CPU=1)
    assert not fits_some_node([dead_gpu, head], gpu) and fits_some_node([dead_gpu, head], cpu)
    assert fits_some_node([_node("c", True, CPU=2, GPU=1)], gpu)
    assert issubclass(ShardsStranded, Exception)
    monkeypatch.setenv("LCER_RAY_NODE_GRACE_S", "2.5")
    assert node_grace_s() == 2.5
    monkeypatch.setenv("LCER_RAY_NODE_GRACE_S", "soon")
    with pytest.raises(InvalidParameterError, match=r"^LCER_RAY_NODE_GRACE_S must be a positive"):
        node_grace_s()


@pytest.fixture()
def cluster(http_mirror: str) -> Iterator[dict[str, Any]]:
    """A Prefect server, a head node (1 CPU) and a GPU node (1 CPU, 1 logical GPU) whose remote
    shards wait 4 s after saying where they run."""
    root = Path(tempfile.mkdtemp(prefix="lcdead", dir="/tmp"))  # short: Ray's socket paths
    flow, empty = root / "flow", root / "empty"
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
        "PREFECT_API_URL": api,
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            _start(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
                {**base, "PREFECT_HOME": str(flow / "prefect-server")},
                root / "server.log",
            )
        )
        nodes = {}
        for name, extra in (
            ("head", ["--head", "--port", str(port), "--num-gpus", "0",
                      "--include-dashboard", "false"]),
            ("worker", ["--address", f"127.0.0.1:{port}", "--num-gpus", "1"]),
        ):  # fmt: skip
            node_home = root / name
            env = {
                **base,
                "LCER_HOME": str(node_home / "lcer-home"),
                "PREFECT_HOME": str(node_home / "prefect-home"),
                "PYTHONPATH": str(REPO / "tests" / "faults"),
                "LCER_FAULT_SLOW_SHARD": "4",
            }
            cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                   "--temp-dir", str(node_home / "ray"), "--disable-usage-stats", *extra]  # fmt: skip
            proc = _start(_namespaced(cmd, flow, empty), env, root / f"{name}.log", cwd=node_home)
            procs.append(proc)
            nodes[name] = proc
            if name == "head":
                _wait_port(port, proc, root / "head.log")
        info = _wait_for(f"127.0.0.1:{port}", 2, root, nodes["worker"])
        import httpx

        deadline = time.monotonic() + 90
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
            "flow": flow,
            "env": {
                **base,
                "LCER_MIRROR": http_mirror,
                "LCER_HOME": str(flow / "home"),
                "LCER_RAY_NODE_GRACE_S": str(GRACE_S),
            },  # fmt: skip
            "gpu_node": info["gpu_node"],
            "worker": nodes["worker"],
        }
    finally:
        for proc in reversed(procs):
            _stop(proc, grace=30)
        shutil.rmtree(root, ignore_errors=True)


def _kill_node(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL every process of a node (``ray start``, its raylet, its workers) by pid."""
    tree = [proc.pid]
    with contextlib.suppress(psutil.NoSuchProcess):
        tree += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    for pid in reversed(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return tree


@pytest.mark.slow
def test_a_dead_gpu_node_ends_the_run_in_one_line_and_the_rerun_resumes(
    cluster: dict[str, Any],
) -> None:
    env, flow = cluster["env"], cluster["flow"]
    args = [LCER, *RUN, "--runner", "ray", "--address", cluster["address"]]
    log = flow / "first.log"
    done_re = re.compile(r"shard (\d+) of ml-100k/lcer k=5: .* found on node (\w+)")
    started_re = re.compile(r"shard (\d+) of ml-100k/lcer k=5 started on node (\w+) pid (\d+)")
    with log.open("w") as out:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 420
        while True:  # one LCER shard finished on the GPU node, the other one started there
            assert proc.poll() is None, f"lcer run ended early:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no second LCER shard started:\n{_tail(log)}"
            text = log.read_text(errors="replace")
            finished = {m.group(1) for m in done_re.finditer(text)}
            running = [m.group(1) for m in started_re.finditer(text) if m.group(1) not in finished]
            if finished and running:
                break
            time.sleep(0.2)
        (kept,), (lost,) = sorted(finished), sorted(set(running))
        _kill_node(cluster["worker"])
        killed_at = time.monotonic()
        proc.wait(timeout=240)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")

    # Bounded: Ray's detection of the dead node (seconds) plus the grace period, not forever.
    assert proc.returncode == 2, text[-4000:]
    assert took < 120, took
    print(f"lcer run ended {took:.1f} s after the GPU node was killed (grace {GRACE_S} s)")
    # Prefect's own log stream (not a terminal: plain lines) shows the flow's failure; the
    # command's verdict is one line, its last.
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text.strip().splitlines()[-1] == errors[0], text[-4000:]
    (error,) = errors
    assert re.search(rf"Ray node \S+ \(node id {cluster['gpu_node']}\) died", error), error
    assert "no live node has CPU 1, GPU 1" in error and f"after {GRACE_S} s" in error, error
    assert re.search(rf"ml-100k lcer k=5 α=\S+ λ=\S+ shard {lost}(;|$)", error), error
    assert f"shard {kept}" not in error, error

    # What finished is kept: FIA's run, stored; LCER's finished shard, on disk.
    runs = {r["method"]: r for r in _sql("select run_id, method, status from runs", env)}
    assert runs["fia"]["status"] == "finished" and runs["lcer"]["status"] == "failed", runs
    work = Path(env["LCER_HOME"]) / "work" / runs["lcer"]["run_id"]
    kept_file, lost_file = (
        work / f"shard-{int(kept):04d}.parquet",
        work / f"shard-{int(lost):04d}.parquet",
    )
    assert kept_file.is_file() and not lost_file.exists()
    kept_mtime = kept_file.stat().st_mtime_ns

    # The same command again: only the lost shard runs (on the head's CPU), the rest is reused.
    again = flow / "again.log"
    with again.open("w") as out:
        rerun = subprocess.run(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                               timeout=420)  # fmt: skip
    text = again.read_text(errors="replace")
    assert rerun.returncode == 0, text[-4000:]
    assert [m.group(1) for m in started_re.finditer(text)] == [lost], text[-4000:]
    assert "of ml-100k/fia" not in text
    assert kept_file.stat().st_mtime_ns == kept_mtime
    statuses = _sql("select method, status from runs order by 1", env)
    assert statuses == [{"method": "fia", "status": "finished"},
                        {"method": "lcer", "status": "finished"}]  # fmt: skip
    placed = _sql(
        "select s.shard, s.node from shards s join runs r using (run_id) "
        "where r.method = 'lcer' order by 1",
        env,
    )
    assert {p["shard"]: p["node"] for p in placed}[int(kept)] == cluster["gpu_node"]
    assert {p["shard"]: p["node"] for p in placed}[int(lost)] != cluster["gpu_node"]
    assert _sql("select count(*) as n from explanations", env) == [{"n": 20}]
