"""``lcer ui``: serve the MLflow UI on the project's local tracking store.

The server is ``mlflow server`` run as a child process (lcer_core never imports mlflow):
the backend store is :func:`lcer_core.paths.mlflow_tracking_uri`, artifacts of runs
logged through the server land under ``LCER_HOME/mlflow/artifacts``. The server leads its own
process group and dies with ``lcer ui``, even a ``kill -9`` of it (Linux: the parent-death
signal, SIGTERM, which ``mlflow server`` forwards to its uvicorn workers), so it never holds
the port after ``lcer ui`` is gone.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import FrameType

import httpx
import typer

from lcer_core import paths
from lcer_core.errors import InvalidParameterError, LcerError
from lcer_core.fsio import ensure_writable

__all__ = [
    "server_command",
    "server_env",
    "wait_until_ready",
    "free_port",
    "compare_runs_url",
    "ui",
]

READY_PATH = "/api/2.0/mlflow/experiments/search"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except socket.gaierror as exc:
            raise InvalidParameterError(
                f"--host {host!r} is not an address of this machine ({exc.strerror})"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidParameterError(
                    f"--host {host!r} is not an address of this machine ({exc.strerror})"
                ) from None
            raise InvalidParameterError(
                f"port {port} on {host} is not free ({exc.strerror}); choose another with --port"
            ) from exc


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def server_command(uri: str, host: str, port: int, artifacts: Path, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line for a store at ``uri`` with artifacts under ``artifacts``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--registry-store-uri",
        uri,
        "--artifacts-destination",
        artifacts.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def server_env() -> dict[str, str]:
    """The server's environment: ours, with MLflow's background job runner off unless asked for.

    The job runner (GenAI scorers, a pool of huey workers) is idle weight for this project.
    """
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage data sent, as for Prefect
    return env


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: the child leads a new session and, on Linux, gets SIGTERM when this
    process dies, however it dies (``PR_SET_PDEATHSIG``; a SIGKILL cannot be caught here)."""
    parent = os.getpid()
    prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None

    def setup() -> None:
        os.setsid()
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return setup


def wait_until_ready(
    base_url: str, timeout_s: float = 90.0, proc: subprocess.Popen | None = None
) -> None:
    """Block until the server answers its REST API (``POST experiments/search``), or raise LcerError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LcerError(
                f"mlflow server exited with status {proc.returncode} before it was ready"
            )
        try:
            r = httpx.post(base_url + READY_PATH, json={"max_results": 1}, timeout=2.0)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise LcerError(f"mlflow server at {base_url} not ready after {timeout_s:g} s")


def compare_runs_url(base_url: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """The UI's run-comparison page for these runs."""
    from urllib.parse import quote

    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    exps = quote(json.dumps(experiment_ids, separators=(",", ":")))
    return f"{base_url}/#/compare-runs?runs={runs}&experiments={exps}"


def _terminate(proc: subprocess.Popen) -> None:
    """Stop the server (it forwards SIGTERM to its workers), then anything left in its group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def ui(
    port: int = typer.Option(5000, help="Port to listen on (0: any free port)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; loopback by default."),
    workers: int = typer.Option(1, min=1, help="Server worker processes."),
    ready_timeout: float = typer.Option(90.0, help="Seconds to wait for the server to answer."),
) -> None:
    """Serve the MLflow UI (experiments, runs, registered models) on the local tracking store."""
    uri = paths.mlflow_tracking_uri()
    if uri.startswith(("http://", "https://")):
        typer.echo(f"MLFLOW_TRACKING_URI points at a running server: open {uri}")
        return
    if port < 0 or port > 65535:
        raise InvalidParameterError(f"port must be in 0..65535, not {port}")
    if not (math.isfinite(ready_timeout) and ready_timeout > 0):
        raise InvalidParameterError(
            f"--ready-timeout must be a positive number of seconds, got {ready_timeout}"
        )
    _check_port(host, port)  # with port 0, this checks the host
    port = port or free_port(host)
    artifacts = paths.mlflow_dir() / "artifacts"
    folders = [artifacts]
    if uri.startswith("sqlite:///"):
        folders.append(Path(uri.removeprefix("sqlite:///")).parent)
    for folder in folders:  # the server would fail later, and less clearly
        ensure_writable(folder)
    base = f"http://{host}:{port}"
    if not is_loopback(host):
        typer.echo(
            f"warning: --host {host} serves MLflow's API to the network without authentication: "
            f"whoever reaches port {port} can read, change and delete runs and models",
            err=True,
        )
    typer.echo(f"starting mlflow server on {base} (store {uri})", err=True)
    proc = subprocess.Popen(
        server_command(uri, host, port, artifacts, workers),
        env=server_env(),
        preexec_fn=_die_with_parent(),  # no thread of ours runs yet: fork-safe
    )
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        wait_until_ready(base, ready_timeout, proc)
        typer.echo(f"MLflow UI at {base}  (Ctrl-C to stop)")
        proc.wait()
        if proc.returncode:
            raise LcerError(f"mlflow server exited with status {proc.returncode}")
    except KeyboardInterrupt:
        typer.echo("stopping mlflow server", err=True)
    finally:
        _terminate(proc)
        signal.signal(signal.SIGTERM, previous)
