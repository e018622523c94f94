"""Run ``lcer`` commands in-process inside a fault environment, and report their outcomes as JSON.

The fault tests start this script in an environment they cannot create in their own process:
a private mount namespace (``unshare -Urm``) where it first mounts a read-only or tiny tmpfs,
a process without the capabilities that let root ignore file permissions, or a file-size
limit. Running every command of a plan in one process saves the start-up of each.

Reads a plan from stdin::

    {"mounts": [["-t", "tmpfs", "-o", "size=64k", "tmpfs", "/some/dir"], ...],
     "steps": [{"argv": ["prepare", "ml-100k"], "env": {"LCER_HOME": "..."}},
               {"train": "ml-100k", "env": {...}},
               {"write_shard": "/path/shard-0000.parquet"}],
     "list": ["/some/dir", ...]}

and prints one JSON object: ``{"steps": [{"code", "out", "err", "seconds"}, ...], "listing": {dir:
[relative file paths]}}``, or ``{"mount_failed": "..."}`` when a mount is not allowed here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _cli(argv: list[str]) -> int:
    from lcer_core.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _train(dataset: str) -> int:
    from lcer_core import models
    from lcer_core.datasets import load_prepared
    from lcer_core.recommender.multvae import MultVAEConfig

    small = MultVAEConfig(hidden=16, latent=8, epochs=1)  # fast, and still ~190 KB on disk
    models.train_model(load_prepared(dataset), small, seed=1, device="cpu")
    return 0


def _write_shard(path: str) -> int:
    import polars as pl

    from lcer_core.fsio import write_parquet_atomic

    frame = pl.DataFrame(
        {"uid": pl.int_range(50_000, eager=True), "score": pl.repeat(0.5, 50_000, eager=True)}
    )
    write_parquet_atomic(frame, Path(path))
    return 0


def _step(step: dict[str, Any]) -> dict[str, Any]:
    from lcer_core.errors import LcerError

    os.environ.update(step.get("env", {}))
    start = time.monotonic()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if "argv" in step:
                code = _cli(step["argv"])
            elif "train" in step:
                code = _train(step["train"])
            else:
                code = _write_shard(step["write_shard"])
        except LcerError as exc:  # the library's calls, reported as the CLI would
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        except BaseException:
            traceback.print_exc()
            code = 1
    return {
        "step": step,
        "code": code,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "seconds": round(time.monotonic() - start, 2),
    }


def _listing(folder: str) -> list[str]:
    root = Path(folder)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def main() -> None:
    plan = json.load(sys.stdin)
    for args in plan.get("mounts", []):
        done = subprocess.run(["mount", *args], capture_output=True, text=True)
        if done.returncode != 0:
            print(json.dumps({"mount_failed": f"mount {' '.join(args)}: {done.stderr.strip()}"}))
            return
    result = {
        "steps": [_step(s) for s in plan["steps"]],
        "listing": {d: _listing(d) for d in plan.get("list", [])},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
