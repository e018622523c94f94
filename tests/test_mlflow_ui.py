"""`lcer ui` serves the MLflow UI: a real server on loopback, rendered by headless Chromium.

Set ``LCER_FIGS_DIR`` to keep the screenshot (``LCER_FIGS_DIR=/tmp/figs``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from browser import render, require_chromium
from mlflow.tracking import MlflowClient
from mlflow_fixtures import mlflow_template_db_fixture, store_fixture  # noqa: F401

from lcer_core.cli.mlflow_ui import compare_runs_url, free_port, wait_until_ready
from tasks import mlflow_client

pytestmark = pytest.mark.slow

# Start `lcer ui` through the CLI's entry point (which registers every command).
UI_SCRIPT = "import sys; from lcer_core.cli.app import main; main(sys.argv[1:])"


def _stop(proc: subprocess.Popen) -> None:
    """Stop the `lcer ui` process group we started (it holds mlflow server and its workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # children left behind by an abrupt exit
        os.killpg(proc.pid, signal.SIGKILL)


def _sweep() -> tuple[str, list[str], list[str]]:
    """A 2 x 2 sweep in the ml-100k experiment: (experiment id, child run ids, child run names)."""
    exp_id = mlflow_client.ensure_experiment("ml-100k")
    ids, names = [], []
    with mlflow_client.sweep_run(
        "ml-100k", {"method": "lcer", "k": 5, "alphas": [0.1, 0.5], "lams": [0.01, 1.0]}
    ) as parent:
        for a in (0.1, 0.5):
            for lam in (0.01, 1.0):
                name = f"lcer-k5-a{a:g}-l{lam:g}"
                ids.append(
                    mlflow_client.log_explain_run(
                        "ml-100k",
                        method="lcer",
                        k=5,
                        alpha=a,
                        lam=lam,
                        metrics={
                            "val_pct": 99.5,
                            "len": 4.0 - 2 * lam,
                            "ps_pct": 80.0 + 10 * a,
                            "pn_pct": 70.0 - 20 * lam,
                            "fns_pct": 74.0 + a - lam,
                        },
                        parent_run_id=parent,
                        run_name=name,
                    )
                )
                names.append(name)
    return exp_id, ids, names


def test_ui_shows_sweep_runs_and_metrics(
    lcer_home: Path, store: MlflowClient, tmp_path: Path
) -> None:
    require_chromium()
    exp_id, run_ids, run_names = _sweep()
    assert store.get_run(run_ids[0]).info.status == "FINISHED"

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out, err = (tmp_path / "ui.out").open("w"), (tmp_path / "ui.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", UI_SCRIPT, "ui", "--port", str(port)],
        stdout=out,
        stderr=err,
        env={**os.environ, "LCER_HOME": str(lcer_home)},
        start_new_session=True,
    )
    try:
        started = time.monotonic()
        wait_until_ready(base, timeout_s=150, proc=proc)
        print(f"mlflow server ready in {time.monotonic() - started:.1f} s")
        deadline = time.monotonic() + 30
        while "MLflow UI at " + base not in (tmp_path / "ui.out").read_text():
            assert time.monotonic() < deadline, (tmp_path / "ui.err").read_text()[-2000:]
            time.sleep(0.2)

        profile, shot = tmp_path / "chromium-profile", tmp_path / "compare-runs.png"
        url = compare_runs_url(base, run_ids, [exp_id])
        dom = render(
            url,
            profile=profile,
            screenshot=shot,
            window=(1500, 2000),
            budget_ms=15000,
            timeout=150,
        )
        print(f"chromium done at {time.monotonic() - started:.1f} s")

        assert "Comparing 4 Runs" in dom, dom[:2000]
        for name in run_names:
            assert name in dom
        for metric in mlflow_client.METRICS:
            assert f">{metric}<" in dom, metric
        for param in ("alpha", "lam", "method"):
            assert f">{param}<" in dom, param

        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(shot)
        assert img.shape[:2] == (2000, 1500)
        rgb = img[..., :3].reshape(-1, 3)
        packed = (rgb * 255).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
        assert np.unique(packed).size > 200  # text, plots and widgets, not a blank or error page
        if keep := os.environ.get("LCER_FIGS_DIR"):
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "mlflow_compare_runs.png")
    finally:
        _stop(proc)
        out.close()
        err.close()
    assert proc.poll() is not None


def test_ui_refuses_a_busy_port(lcer_home: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", UI_SCRIPT, "ui", "--port", str(port)],
            capture_output=True,
            text=True,
            env={**os.environ, "LCER_HOME": str(lcer_home)},
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is not free (Address already in use); choose another with --port"
    ]
