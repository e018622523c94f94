"""Answers do not depend on the machine's cores: the same shard explained in processes that see
1, 2 or 4 cores (``taskset`` / ``OMP_NUM_THREADS``), and beside a CPU-bound process, stores the
same rows bit for bit (importance included), for LCER and the searches.

The model is trained once here; each process explains the same users with the run's core
function (``lcer_core.shards.explain_users``) and writes its rows to Parquet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.slow

_SCRIPT = """
import sys
import polars as pl
from lcer_core import api
from lcer_core.explainers import get_explainer
from lcer_core.runs import RunSpec
from lcer_core.shards import explain_users

data = api.load_dataset("ml-100k")
model = api.load_model("ml-100k")
users = api.make_pairs(model.recommender("cpu"), data, 6, 5).users.unique().tolist()
frames = []
for method, options in (("lcer", {"steps": 300}), ("kaffes", {}), ("accent", {})):
    config = get_explainer(method, **options).config
    spec = RunSpec(run_id=method, dataset="ml-100k", method=method, k=5, seed=0, n_users=6,
                   model_key=model.key, config=config)
    frames.append(explain_users(data, model, spec, users, device="cpu")
                  .drop("explain_s").with_columns(method=pl.lit(method)))
pl.concat(frames, how="diagonal_relaxed").write_parquet(sys.argv[1])
"""


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory, http_mirror: str) -> Path:
    home = tmp_path_factory.mktemp("threads-home")
    env = _env(home, http_mirror)
    lcer = str(Path(sys.executable).parent / "lcer")
    done = subprocess.run(
        [lcer, "train", "ml-100k", "--epochs", "3"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return home


def _env(home: Path, mirror: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "LCER_"))}
    return env | {"LCER_HOME": str(home), "LCER_MIRROR": mirror, **extra}


def _explain(home: Path, mirror: str, out: Path, prefix: list[str], **extra: str) -> pl.DataFrame:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _SCRIPT, str(out)],
        env=_env(home, mirror, **extra),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return pl.read_parquet(out)


def test_rows_identical_on_1_2_and_4_cores_and_under_load(
    trained_home: Path, http_mirror: str, tmp_path: Path
) -> None:
    taskset = shutil.which("taskset")
    one_core = [taskset, "-c", "0"] if taskset else []
    runs = {
        "1 core": _explain(trained_home, http_mirror, tmp_path / "1.parquet", one_core),
        "2 cores": _explain(trained_home, http_mirror, tmp_path / "2.parquet", []),
        "4 threads": _explain(
            trained_home, http_mirror, tmp_path / "4.parquet", [], OMP_NUM_THREADS="4"
        ),
    }
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        runs["under load"] = _explain(trained_home, http_mirror, tmp_path / "l.parquet", [])
    finally:
        busy.kill()
        busy.wait()
    reference = runs.pop("1 core")
    assert reference.height == 3 * 6 * 5
    assert reference.filter(pl.col("method") == "lcer")["found"].sum() > 0
    for name, frame in runs.items():
        assert frame.equals(reference), f"{name}: rows differ from the 1-core run"
