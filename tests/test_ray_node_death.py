"""A Ray node that dies under a shard: the run is bounded, says which node and shards, keeps what
finished, and the same command resumes.

A real two-node cluster on loopback (head: 1 CPU; worker: 1 CPU and one logical GPU, so
the shards ask for ``num_gpus=1`` and go there) and a real Prefect server, started by
:mod:`ray_nodes` as for ``test_ray_cluster``. LCER's run alone (two shards): a baseline's
shards would ask for the GPU too. No model is there at first: Mult-VAE trains on the GPU node
and its checkpoint comes back to the flow. Once one LCER shard has finished on the GPU node and the next has
started there (slowed by the harness's fault hook), every process of that node (its raylet,
its workers) is killed by pid. No live node has a GPU any more: instead of waiting forever,
``lcer run`` ends within the grace period (``LCER_RAY_NODE_GRACE_S``) plus Ray's detection,
exit 2, one line naming the node and the shard; LCER's finished shard is kept,
and running the same command again explains only the missing shard (on the head's CPU).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from ray_nodes import LCER, ray_cluster
from test_prefect_e2e import REPO, _tail
from test_ray_cluster import RUN, _sql

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
    with ray_cluster("lcdead", http_mirror, slow_shard_s=4) as info:
        flow = info["flow"]
        env = {
            **info["env"],
            "LCER_HOME": str(flow / "home"),
            "LCER_RAY_NODE_GRACE_S": str(GRACE_S),
        }
        yield {**info, "env": env}


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
    lcer_only = [a if a != "lcer,fia" else "lcer" for a in RUN]  # a baseline would need the GPU too
    args = [LCER, *lcer_only, "--runner", "ray", "--address", cluster["address"]]
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
    # No model was there: Mult-VAE trained on the GPU node and its checkpoint came back here.
    trained = rf"trained on Ray node {cluster['gpu_node']} device (cpu|cuda:0) ray-gpu 0"
    assert re.search(trained, text), text[-4000:]
    (error,) = errors
    assert re.search(rf"Ray node \S+ \(node id {cluster['gpu_node']}\) died", error), error
    assert "no live node has CPU 1, GPU 1" in error and f"after {GRACE_S} s" in error, error
    assert re.search(rf"ml-100k lcer k=5 α=\S+ λ=\S+ shard {lost}(;|$)", error), error
    assert f"shard {kept}" not in error, error

    # What finished is kept: LCER's finished shard, on disk.
    runs = {r["method"]: r for r in _sql("select run_id, method, status from runs", env)}
    assert runs["lcer"]["status"] == "failed", runs
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
    assert kept_file.stat().st_mtime_ns == kept_mtime
    statuses = _sql("select method, status from runs order by 1", env)
    assert statuses == [{"method": "lcer", "status": "finished"}]
    placed = _sql(
        "select s.shard, s.node from shards s join runs r using (run_id) "
        "where r.method = 'lcer' order by 1",
        env,
    )
    assert {p["shard"]: p["node"] for p in placed}[int(kept)] == cluster["gpu_node"]
    assert {p["shard"]: p["node"] for p in placed}[int(lost)] != cluster["gpu_node"]
    assert _sql("select count(*) as n from explanations", env) == [{"n": 10}]
