"""The test Ray cluster: a Prefect server and two Ray nodes on loopback, started and stopped by pid.

One helper for every test that needs the two-node cluster (``test_ray_cluster``,
``test_ray_node_death``). The head node (1 CPU, no GPU) and a worker node (``worker_cpus``
CPUs, ``worker_gpus`` logical GPUs) are each started by ``ray start --block`` in a mount
namespace of their own where the flow's folders (``root/flow``: its ``LCER_HOME``) and every
folder of our packages (the checkout under test, the environment's installed copy) are an
empty folder, with their own working folder and ``LCER_HOME``: as on other machines, they
share no filesystem with the flow, and run the code the flow ships them (Ray's
``runtime_env``). Their workers inherit the harness's fault hook
(``tests/faults/sitecustomize.py``): a remote shard waits ``slow_shard_s`` seconds after
saying where it runs, so that a test can act while it runs. Everything is stopped by the pid
it was started with (never ``ray stop``).
"""

from __future__ import annotations

import contextlib
import json
import os
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

from s3_fixtures import SharedStorage
from test_prefect_e2e import PREFECT, REPO, _free_port, _start, _stop, _tail

BIN = Path(sys.executable).parent
LCER = str(BIN / "lcer")
RAY = str(BIN / "ray")


def can_unshare() -> bool:
    """Whether this machine lets a process make a mount namespace of its own."""
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


def namespaced(cmd: list[str], hidden: list[Path], empty: Path) -> list[str]:
    """``cmd`` in a mount namespace of its own where each folder of ``hidden`` shows the empty
    folder ``empty`` (plain ``cmd`` where this machine cannot make one)."""
    if not can_unshare():
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


def our_code(env: dict[str, str]) -> list[Path]:
    """Every folder of our packages a Python of this environment could import by path: the
    checkout under test and whatever the environment has installed (an editable install's)."""
    found = {REPO / name for name in ("lcer_core", "flows", "tasks")}
    script = (
        "import lcer_core, flows, tasks as t; print(lcer_core.__path__[0]); "
        "print(flows.__path__[0]); print(t.__path__[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True
    )
    found |= {Path(line) for line in done.stdout.splitlines() if line.strip()}
    return sorted(p.resolve() for p in found if p.is_dir())


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    """Stop a ``ray start --block`` node this test started, by its process group: SIGINT, on
    which it stops its raylet and GCS and exits in about 2 s (on SIGTERM it takes about 34 s);
    SIGKILL for anything left after 30 s."""
    _stop(proc, signal.SIGINT, grace=30)


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until something listens on loopback ``port`` (``proc`` must stay alive)."""
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, f"ray head exited:\n{_tail(log)}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        assert time.monotonic() < deadline, f"ray head not listening after 90 s:\n{_tail(log)}"
        time.sleep(0.5)


def wait_for(address: str, n: int, root: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
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
            [sys.executable, "-c", script], env=clean_env(), capture_output=True, text=True,
            timeout=150,
        )  # fmt: skip
        if done.returncode == 0:
            info = json.loads(done.stdout.strip().splitlines()[-1])
            if len(info["nodes"]) >= n:
                return info
        assert time.monotonic() < deadline, done.stderr[-3000:]
        time.sleep(1)


def clean_env() -> dict[str, str]:
    """This process's environment without any Prefect, LCER, MLflow or Ray setting; Ray's token
    authentication off (Ray turns it on for every node and client when ``~/.ray/auth_token``
    exists, which any local ``ray.init()`` on this machine writes)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "LCER_", "MLFLOW_", "RAY_"))
    }
    return env | {"RAY_AUTH_MODE": "disabled"}


def _wait_server(api: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, _tail(log)
        time.sleep(0.5)


@contextlib.contextmanager
def ray_cluster(
    prefix: str,
    mirror: str,
    *,
    worker_cpus: int = 1,
    worker_gpus: int = 1,
    slow_shard_s: float = 2,
    storage: SharedStorage | None = None,
) -> Iterator[dict[str, Any]]:
    """A Prefect server and two Ray nodes (head: 1 CPU; worker: ``worker_cpus`` CPUs and
    ``worker_gpus`` logical GPUs), stopped by pid on leaving. The nodes see neither the flow's
    folders nor any copy of our code (the flow ships it through Ray's ``runtime_env``), and
    get ``storage``'s environment (its credentials, as on a cloud's machines).

    Yields ``address``, ``root``, ``flow`` (the flow's folder, hidden from the nodes),
    ``empty`` (what the nodes see there), ``env`` (for ``lcer``: the server's URL and
    ``mirror``; no ``LCER_HOME``), ``gpu_node``, ``nodes`` (node ids) and ``worker`` (the
    worker node's ``ray start`` process).
    """
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: Ray's socket paths
    flow, empty = root / "flow", root / "empty"
    for folder in (flow, empty, root / "head", root / "worker"):
        folder.mkdir()
    port, api_port = _free_port(), _free_port()
    api = f"http://127.0.0.1:{api_port}/api"
    base = clean_env() | {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PREFECT_API_URL": api,
    }
    hidden = [flow, *our_code({**base, "PYTHONPATH": ""})]
    if can_unshare():  # the probe: a node's Python cannot import our code by path
        probe = subprocess.run(
            namespaced([sys.executable, "-c", "import tasks.explain"], hidden, empty),
            env={**base, "PYTHONPATH": ""}, cwd="/", capture_output=True, text=True,
        )  # fmt: skip
        assert probe.returncode != 0, "a node's Python could still import our code by path"
    procs: list[subprocess.Popen[bytes]] = []
    nodes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs.append(
            _start(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
                {**base, "PREFECT_HOME": str(flow / "prefect-server")},
                root / "server.log",
            )
        )
        for name, extra in (
            ("head", ["--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0",
                      "--include-dashboard", "false"]),
            ("worker", ["--address", f"127.0.0.1:{port}", "--num-cpus", str(worker_cpus),
                        "--num-gpus", str(worker_gpus)]),
        ):  # fmt: skip
            node_home = root / name
            env = {
                **base,
                "LCER_HOME": str(node_home / "lcer-home"),
                "PREFECT_HOME": str(node_home / "prefect-home"),
                # only the harness's fault hook: our code comes from the flow
                "PYTHONPATH": str(REPO / "tests" / "faults"),
                "LCER_FAULT_SLOW_SHARD": f"{slow_shard_s:g}",
                **(storage.env if storage else {}),
            }
            cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1",
                   "--temp-dir", str(node_home / "ray"), "--disable-usage-stats", *extra]  # fmt: skip
            proc = _start(namespaced(cmd, hidden, empty), env, root / f"{name}.log", cwd=node_home)
            procs.append(proc)
            nodes[name] = proc
            if name == "head":  # the worker node needs the head's GCS
                wait_port(port, proc, root / "head.log")
        info = wait_for(f"127.0.0.1:{port}", 2, root, nodes["worker"])
        _wait_server(api, root / "server.log")
        yield {
            "address": f"127.0.0.1:{port}",
            "root": root,
            "flow": flow,
            "empty": empty,
            "env": {**base, "LCER_MIRROR": mirror},
            "gpu_node": info["gpu_node"],
            "nodes": info["nodes"],
            "worker": nodes["worker"],
        }
    finally:
        for proc in reversed(procs):
            if proc in nodes.values():
                stop_node(proc)
            else:
                _stop(proc, grace=30)
        shutil.rmtree(root, ignore_errors=True)
