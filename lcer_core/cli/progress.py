"""What a long command shows: rich progress bars on a terminal, today's plain lines elsewhere,
and the full record in ``LCER_HOME/logs/lcer-<timestamp>.log`` in both cases.

On a terminal (and without ``--verbose``) Prefect's console lines, MLflow's and anything else
printed while a flow runs go to the log file only; warnings and errors still reach the
terminal as one line each, above the bars. Progress comes from :mod:`lcer_core.progress_events`,
which tasks emit from the runner's threads in this process; with another runner (Ray) no
event arrives, so the command keeps the plain log stream instead.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from lcer_core import paths
from lcer_core.errors import LcerHomeError
from lcer_core.progress_events import listen
from lcer_core.safe_text import printable

__all__ = ["Session", "session", "epoch_bar", "stage_bars", "new_log_path", "stderr_is_terminal"]

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(run)s: %(message)s"


class _LogFormat(logging.Formatter):
    """One line per record, naming the Prefect flow or task run it came from."""

    def format(self, record: logging.LogRecord) -> str:
        task_run = getattr(record, "task_run_name", None)
        flow_run = getattr(record, "flow_run_name", None)
        record.run = f" [{task_run}]" if task_run else f" [flow run {flow_run}]" if flow_run else ""
        return super().format(record)


def stderr_is_terminal() -> bool:
    """Whether progress bars may be drawn: stderr is a terminal (rich's own test, TERM=dumb aside)."""
    return Console(stderr=True).is_terminal


def new_log_path() -> Path:
    """A fresh log file name under ``LCER_HOME/logs`` (UTC time and process id)."""
    folder = paths.lcer_home() / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LcerHomeError(f"cannot write {folder}: {exc.strerror or exc}") from exc
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return folder / f"lcer-{stamp}-{os.getpid()}.log"


class _RateColumn(ProgressColumn):
    """``12.3 pairs/s`` from rich's own speed estimate, or the task's ``info`` field."""

    def render(self, task: Any) -> Text:
        info = task.fields.get("info", "")
        unit = task.fields.get("unit")
        if unit and task.speed:
            info = f"{task.speed:,.1f} {unit}/s"
        return Text(str(info), style="progress.data.speed")


def _bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[what]}"),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("elapsed,"),
        TimeRemainingColumn(),
        TextColumn("left"),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
        transient=False,
    )


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _WarningsOnly(logging.Filter):
    """After the bars: Prefect's closing lines (the temporary server stopping at exit) stay off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class _ConsoleLines(logging.Handler):
    """Warnings and errors as one plain line each on the terminal, above the bars."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = " ".join(record.getMessage().split())
            self.console.print(
                Text(printable(f"{record.levelname.lower()}: {line}")), soft_wrap=True
            )
        except Exception:  # a display problem must not break the run
            self.handleError(record)


@dataclass
class _Run:
    task: TaskID
    shard_pairs: list[int]
    finished: int = 0
    partial: dict[int, float] = field(default_factory=dict)


class _Listener:
    """Turns :mod:`lcer_core.progress_events` into bars: training epochs, explanation pairs per run."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.lock = threading.Lock()
        self.training: dict[str, TaskID] = {}
        self.runs: dict[str, _Run] = {}
        self.shards = 0

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        with self.lock:
            handler = getattr(self, f"_on_{event}", None)
            if handler is not None:
                handler(**fields)

    def _on_epoch(
        self,
        dataset: str,
        epoch: int,
        epochs: int,
        val_ndcg100: float,
        recommender: str = "recommender",
        **_: Any,
    ) -> None:
        task = self.training.get(dataset)
        if task is None:
            task = self.bar.add_task(
                f"train {recommender} {dataset}", total=epochs, what="epochs", info=""
            )
            self.training[dataset] = task
        self.bar.update(task, completed=epoch, info=f"val NDCG@100 {val_ndcg100:.4f}")

    def _on_run_planned(self, run: str, label: str, shard_pairs: list[int], **_: Any) -> None:
        if run in self.runs:
            return
        task = self.bar.add_task(
            f"explain {label}", total=max(1, sum(shard_pairs)), what="pairs", unit="pairs"
        )
        self.runs[run] = _Run(task, list(shard_pairs))

    def _refresh(self, run: _Run) -> None:
        done = run.finished + sum(
            frac * run.shard_pairs[i] for i, frac in run.partial.items() if i < len(run.shard_pairs)
        )
        self.bar.update(run.task, completed=int(done))

    def _on_steps(self, run: str, index: int, done: int, total: int, **_: Any) -> None:
        state = self.runs.get(run)
        if state is not None:
            state.partial[index] = min(1.0, done / max(1, total))
            self._refresh(state)

    def _on_shard_done(self, run: str, index: int, **_: Any) -> None:
        self.shards += 1
        state = self.runs.get(run)
        if state is not None and index < len(state.shard_pairs):
            state.partial.pop(index, None)
            state.finished += state.shard_pairs[index]
            self._refresh(state)


class _ToLog:
    """A text stream (``sys.stdout``/``sys.stderr`` stand-in) whose lines go to a log file."""

    def __init__(self, file: IO[str], lock: threading.Lock) -> None:
        self.file, self.lock = file, lock
        self.encoding = "utf-8"

    def write(self, text: str) -> int:
        with self.lock:
            self.file.write(text)
        return len(text)

    def flush(self) -> None:
        with self.lock:
            self.file.flush()

    def isatty(self) -> bool:
        return False


@dataclass
class Session:
    """A running command's display: where its log goes and whether bars are drawn."""

    log_path: Path
    bars: bool
    started: float = field(default_factory=time.monotonic)

    def summary(self, what: str, pages: list[Path] | None = None) -> str:
        """One closing line: what was done, how long it took, its HTML pages, where the full log is."""
        secs = time.monotonic() - self.started
        took = f"{secs:.0f} s" if secs < 120 else f"{secs // 60:.0f} min {secs % 60:.0f} s"
        shown = "".join(f"; page: {p}" for p in pages or [])
        return f"{what} in {took}{shown}; full log: {self.log_path}"


def _console_handlers() -> list[logging.Handler]:
    """Handlers that write to the terminal: the root's (Prefect's console) and MLflow's own."""
    out = []
    for name in ("", "mlflow", "uvicorn", "fastapi", "alembic", "sqlalchemy.engine"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                out.append(handler)
    return out


@contextmanager
def session(*, verbose: bool = False, plain_fallback: bool = False) -> Iterator[Session]:
    """Log everything to a new file under ``LCER_HOME/logs``; on a terminal, draw bars instead of log lines.

    Call after Prefect is imported (it configures logging on import). ``verbose`` or
    ``plain_fallback`` (a runner whose tasks run in other processes) keep today's stream.
    """
    path = new_log_path()
    stream = path.open("a", encoding="utf-8", buffering=1)
    lock = threading.Lock()
    file_handler = logging.StreamHandler(_ToLog(stream, lock))
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(_LogFormat(_FORMAT))
    targets = [logging.getLogger(name) for name in ("", "mlflow")]
    for logger in targets:
        logger.addHandler(file_handler)
    bars = stderr_is_terminal() and not verbose and not plain_fallback
    state = Session(path, bars)
    if not bars:
        try:
            yield state
        finally:
            for logger in targets:
                logger.removeHandler(file_handler)
            stream.close()
        return
    console = Console(file=sys.stderr)
    muted = [h for h in _console_handlers() if h is not file_handler]
    drop = _DropAll()
    for handler in muted:
        handler.addFilter(drop)
    lines = _ConsoleLines(console)
    for logger in targets:
        logger.addHandler(lines)
    saved = sys.stdout, sys.stderr
    bar = _bars(console)
    try:
        sys.stdout = sys.stderr = _ToLog(stream, lock)  # type: ignore[assignment]
        with bar, listen(_Listener(bar)):
            yield state
    finally:
        sys.stdout, sys.stderr = saved
        quiet = _WarningsOnly()
        for handler in muted:
            handler.removeFilter(drop)
            handler.addFilter(quiet)
        for logger in targets:
            logger.removeHandler(file_handler)
            logger.removeHandler(lines)
        stream.close()


@contextmanager
def epoch_bar(label: str, epochs: int) -> Iterator[Any]:
    """``on_epoch`` for :func:`lcer_core.models.ensure_model`: a transient bar with validation NDCG@100 (terminal only)."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn(label),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("epochs {task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with bar:
        task = bar.add_task(label, total=epochs, info="")

        def on_epoch(report: Any) -> None:
            bar.update(task, completed=report.epoch, info=f"val NDCG@100 {report.val_ndcg100:.4f}")

        yield on_epoch


@contextmanager
def stage_bars(*, enabled: bool = True) -> Iterator[tuple[Any, Any, Any]]:
    """``(say, on_epoch, progress)`` for ``lcer bench``: transient bars for training epochs and
    each stage's steps on a terminal, with ``say`` printing lines above them; plain lines otherwise."""
    console = Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield typer_echo, None, None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[what]}"),
        _RateColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    tasks: dict[str, TaskID] = {}

    def say(message: str) -> None:
        console.print(Text(printable(message)), soft_wrap=True)

    def on_epoch(report: Any) -> None:
        if "train" not in tasks:
            tasks["train"] = bar.add_task(
                "train the recommender", total=None, what="epochs", info=""
            )
        bar.update(
            tasks["train"], completed=report.epoch, info=f"val NDCG@100 {report.val_ndcg100:.4f}"
        )

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, what="steps", info="")
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield say, on_epoch, progress


def typer_echo(message: str) -> None:
    """A plain line on stdout."""
    import typer

    typer.echo(message)
