"""How the parts are wired: the CLI's command list, what importing it costs, and the test
harness's fault injection (``tests/faults``), which the product knows nothing about."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_store import fake_run

from lcer_core.cli import build_app, main
from lcer_core.cli.commands import COMMANDS
from lcer_core.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "faults"


def test_help_lists_the_registered_commands_in_their_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^│ (\w[\w-]*) ", out, flags=re.MULTILINE)
    assert listed == [c.__name__.replace("_", "-") for c in COMMANDS]
    assert [c.callback for c in build_app().registered_commands] == list(COMMANDS)


def test_command_modules_register_nothing_and_import_no_framework() -> None:
    """Importing every command module binds no app and loads neither Prefect, the flows, the
    tasks, MLflow nor torch: those come when a command runs."""
    code = (
        "import sys\n"
        "from lcer_core.cli import bench, data, explainer_model, mlflow_ui, model, pipeline\n"
        "from lcer_core.cli import results, tune\n"
        "mods = (bench, data, explainer_model, mlflow_ui, model, pipeline, results, tune)\n"
        "print([m.__name__ for m in mods if hasattr(m, 'app')])\n"
        "roots = ('prefect', 'flows', 'tasks', 'mlflow', 'torch', 'ray')\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & set(roots)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "[]"], done.stdout


def test_product_code_has_no_test_hook() -> None:
    hooks = [
        f"{path.relative_to(REPO)}:{n}"
        for part in ("lcer_core", "tasks", "flows")
        for path in (REPO / part).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "LCER_TEST" in line or "before_commit" in line
    ]
    assert hooks == []


def test_harness_holds_the_commit_and_a_kill_there_leaves_nothing(tmp_path: Path) -> None:
    """``LCER_FAULT_HOLD_WRITE`` (from ``tests/faults`` on PYTHONPATH) holds ``write_run``'s
    transaction open before COMMIT; a process killed there has written nothing."""
    home = tmp_path / "home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LCER_")},
        "LCER_HOME": str(home),
        "PYTHONPATH": str(FAULTS),
        "LCER_FAULT_HOLD_WRITE": "120",
        "PYTHONUNBUFFERED": "1",
    }
    first, second = fake_run(method="fia"), fake_run(method="accent")
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from test_store import fake_run\n"
        "from lcer_core.store import ResultStore\n"
        "ResultStore().write_run(*fake_run(method='fia'))\n"
    )
    log = tmp_path / "writer.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    marker = f"LCER_FAULT_HOLD_WRITE: holding the write transaction of run {first[0]['run_id']}"
    try:
        deadline = time.monotonic() + 90
        while marker not in log.read_text():
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = ResultStore(home / "results" / "lcer.duckdb")
    counts = store.counts()
    assert counts["runs"] == counts["recommendations"] == counts["explanations"] == 0, counts
    # Without the variable the same folder on PYTHONPATH changes nothing.
    env.pop("LCER_FAULT_HOLD_WRITE")
    code = code.replace("'fia'", "'accent'")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "LCER_FAULT" not in done.stderr, done.stderr[-2000:]
    assert store.run(second[0]["run_id"])["status"] == "finished"
