"""What a person sees: `lcer run` under a pseudo-terminal draws bars, not log lines, and the log file
keeps the full record; piped, the output stays plain lines with no control characters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pty_screen import run_in_pty

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LCER = str(Path(sys.executable).parent / "lcer")
TINY = ["run", "ml-100k", "--methods", "lcer,fia", "--k", "5", "--users", "4",
        "--shard-size", "2", "--steps", "50", "--epochs", "3"]  # fmt: skip


def _env(home: Path, mirror: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LCER_HOME=str(home), LCER_MIRROR=mirror)
    return env


def test_run_on_a_terminal_shows_bars_and_logs_everything_to_a_file(
    tmp_path: Path, http_mirror: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home, http_mirror)
    screen = run_in_pty([LCER, *TINY], env, str(REPO), timeout=600)
    text = "\n".join(screen.lines)
    assert screen.returncode == 0, text
    assert len(screen.lines) <= 40, text
    # Bars for training and for each explanation run, then the table and one closing line.
    assert re.search(r"train Mult-VAE ml-100k .* 3/3 +epochs val NDCG@100 0\.\d{4}", text), text
    assert re.search(r"explain ml-100k lcer k=5 α=0\.1 λ=0\.01 .* 20/20 pairs", text), text
    assert re.search(r"explain ml-100k fia k=5 .* 20/20 pairs", text), text
    assert re.search(r"│ ml-100k │ lcer +│ 5 │", text) and re.search(
        r"│ ml-100k │ fia +│ 5 │", text
    )
    # No Prefect log lines, no server advice, no per-epoch lines on the terminal.
    for noise in ("INFO", "Starting temporary server", "dedicated Prefect server", "epoch 1/3",
                  "Successfully registered", "anonymous usage data"):  # fmt: skip
        assert noise not in text, text
    found = re.search(
        r"2 explanation runs in \d+ s; page: (\S+\.html); full log: (\S+\.log)$",
        screen.logical_lines()[-1],
    )
    assert found, screen.logical_lines()[-1]
    assert Path(found.group(1)) == home / "work" / "reports" / "ml-100k.html"
    log = Path(found.group(2))
    assert log.parent == home / "logs" and log.is_file()
    record = log.read_text()
    for needle in ("Starting temporary server", "Beginning flow run", "epoch 1/3", "epoch 3/3",
                   "shard 0 of ml-100k/lcer k=5", "shard 1 of ml-100k/fia k=5",
                   "Successfully registered model 'multvae-ml-100k'",
                   "attached Figures 5-7 of ml-100k", "Finished in state Completed"):  # fmt: skip
        assert needle in record, needle
    assert "\x1b" not in record
    # The run's one-page report, kept and attached to both MLflow runs.
    page = (home / "work" / "reports" / "ml-100k.html").read_text()
    assert "Table 2" in page and "data:image/png;base64," in page
    attached = list((home / "mlflow" / "artifacts" / "ml-100k").rglob("report/ml-100k.html"))
    assert len(attached) == 2 and all(p.read_text() == page for p in attached)

    # The same command piped (a script, CI): plain lines, today's stream, no control characters.
    piped = subprocess.run(
        [LCER, *TINY], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert "\x1b" not in piped.stdout + piped.stderr and "\r" not in piped.stderr
    assert "| INFO    | Flow run" in piped.stderr  # Prefect's log lines, as before
    assert re.search(r"│ ml-100k │ lcer +│ 5 │", piped.stdout)
    assert any(
        line.startswith("2 explanation runs in ") and "full log: " + str(home / "logs") in line
        for line in piped.stderr.splitlines()
    )


def test_verbose_restores_the_log_stream_on_a_terminal(tmp_path: Path, http_mirror: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    argv = [LCER, "train", "ml-100k", "--epochs", "2", "--verbose"]
    screen = run_in_pty(argv, _env(home, http_mirror), str(REPO), timeout=600)
    text = "\n".join(screen.lines)
    assert screen.returncode == 0, text
    assert "epoch 2/2: loss" in text and "Beginning flow run" in text
    assert any(
        line.startswith("done in ") and "full log: " in line for line in screen.logical_lines()
    )
