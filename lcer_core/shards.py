"""Explanation shards: test users split into fixed groups, each explained and written as one Parquet file.

A shard file holds one row per (user, recommended item) pair: the recommendation (rank,
score) and its explanation (CE items, importance, outcomes), so a run's rows are the
concatenation of its shards. Files are written atomically (temporary file, then rename)
under ``$LCER_HOME/work/RUN_ID/shard-XXXX.parquet`` with the shard's key (:func:`shard_key`:
the run, the shard's index and users) in their Parquet metadata. A file that exists is
complete, and a file whose key and users match is the record that lets a re-run after a
crash skip the shards that had finished: no other cache (no pickled task result) is needed.
Nothing here knows about Prefect; the orchestration calls these functions.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import torch

from lcer_core.checks import check_shard_size
from lcer_core.columns import EXPLANATION_COLUMNS, RECOMMENDATION_COLUMNS
from lcer_core.datasets import PreparedDataset
from lcer_core.devices import default_device, with_answer_threads
from lcer_core.errors import MissingDataError
from lcer_core.explainers import get_method
from lcer_core.frames import explanation_frame, recommendation_frame
from lcer_core.metrics import evaluate_pairs
from lcer_core.models import TrainedModel
from lcer_core.pairs import make_pairs
from lcer_core.paths import lcer_home
from lcer_core.recommender.counting import CountingRecommender
from lcer_core.runs import RunSpec  # re-exported: the shard functions take one

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "RunSpec",
    "split_users",
    "work_dir",
    "shard_path",
    "SHARD_KEY_FIELD",
    "shard_key",
    "explain_users",
    "shard_is_complete",
    "read_shards",
    "split_run_frame",
    "shard_placements",
]

#: Test users per explanation shard when the caller does not say.
DEFAULT_SHARD_SIZE = 25
#: The Parquet key-value metadata field holding a shard file's :func:`shard_key`.
SHARD_KEY_FIELD = "lcer.shard_key"
# Bumped when a shard file's content changes meaning: older files are then recomputed.
_SHARD_FORMAT = 1


def split_users(users: Sequence[int], shard_size: int) -> list[list[int]]:
    """``users`` in consecutive groups of ``shard_size`` (the last one may be shorter)."""
    check_shard_size(shard_size)
    users = list(users)
    return [users[i : i + shard_size] for i in range(0, len(users), shard_size)]


def work_dir(run_id: str) -> Path:
    """Scratch folder of one run's shards: ``$LCER_HOME/work/RUN_ID``."""
    return lcer_home() / "work" / run_id


def shard_path(run_id: str, index: int) -> Path:
    """``$LCER_HOME/work/RUN_ID/shard-XXXX.parquet``."""
    return work_dir(run_id) / f"shard-{index:04d}.parquet"


def shard_key(spec: RunSpec, index: int, users: Sequence[int]) -> str:
    """What one shard file holds, as a hex digest: the run (its key and fields, as earlier
    versions held them: the key covers the rest of its configuration), the shard's index and
    users. Shard files written by earlier versions keep their keys (format 1)."""
    payload = {
        "format": _SHARD_FORMAT,
        "spec": spec.key_fields(),
        "index": int(index),
        "users": [int(u) for u in users],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@with_answer_threads
def explain_users(
    data: PreparedDataset,
    model: TrainedModel,
    spec: RunSpec,
    users: Sequence[int],
    *,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Recommend top-K to ``users``, explain every pair with the run's method, evaluate; one row per pair
    (with the recommendation's ``score`` and the ``device`` that explained it)."""
    if model.key != spec.model_key:
        raise MissingDataError(
            f"model {model.key} is not the model {spec.model_key} of run {spec.run_id}"
        )
    recommender = model.recommender(device or default_device())
    pairs = make_pairs(recommender, data, list(users), spec.k)
    counting = CountingRecommender(recommender)
    start = time.perf_counter()
    explainer = get_method(spec.method)(spec.config)
    explanations = explainer.explain(counting, pairs, seed=spec.seed, progress=progress)
    seconds = time.perf_counter() - start
    outcomes = evaluate_pairs(recommender, pairs, explanations)
    frame = explanation_frame(data, pairs, explanations, outcomes)
    recs = recommendation_frame(data, pairs, recommender)
    n = max(len(pairs), 1)
    # the shard's cost spread evenly over its pairs: inputs scored, whole-catalogue and
    # target-only scorings, gradient steps and seconds of explanation (on these threads)
    return frame.with_columns(
        score=recs["score"],
        device=pl.lit(torch.device(recommender.device).type),
        forward_calls=pl.lit(counting.rows / n, dtype=pl.Float64),
        catalogue_calls=pl.lit(counting.catalogue_rows / n, dtype=pl.Float64),
        target_calls=pl.lit(counting.target_scores / n, dtype=pl.Float64),
        grad_steps=pl.lit(counting.grad_rows / n, dtype=pl.Float64),
        explain_s=pl.lit(seconds / n, dtype=pl.Float64),
        threads=pl.lit(torch.get_num_threads(), dtype=pl.Int32),
    )


def shard_is_complete(path: Path, users: Sequence[int], key: str | None = None) -> bool:
    """Whether ``path`` is a readable shard file of exactly ``users`` (and, given ``key``, whose
    metadata holds that :func:`shard_key`): anything else is to be computed again."""
    if not path.is_file():
        return False
    try:
        if key is not None and pl.read_parquet_metadata(path).get(SHARD_KEY_FIELD) != key:
            return False
        stored = pl.read_parquet(path, columns=["uid"])["uid"].unique().to_list()
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return False
    return sorted(stored) == sorted(set(users))


def read_shards(paths: Sequence[Path | str]) -> pl.DataFrame:
    """The rows of a run: its shard files concatenated, ordered by user and rank."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise MissingDataError(f"shard file {missing[0]} is missing")
    if not paths:
        raise MissingDataError("a run has no shard files")
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed").sort(
        "uid", "rank"
    )


def shard_placements(frame: pl.DataFrame) -> pl.DataFrame | None:
    """Where each shard of a run's rows ran: one row per shard (``shard, node, device, users,
    pairs``; ``device`` the shard file's ``placement`` where it has one: ``cuda:1``, ``cpu
    ray-gpu 0``); None for rows written before shard files said so."""
    if not {"shard", "node", "device"} <= set(frame.columns):
        return None
    device = pl.col("device")
    if "placement" in frame.columns:
        device = pl.coalesce(pl.col("placement"), device)
    return (
        frame.group_by("shard")
        .agg(
            node=pl.col("node").first(),
            device=device.first(),
            users=pl.col("uid").n_unique(),
            pairs=pl.len(),
        )
        .sort("shard")
    )


def split_run_frame(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(recommendations, explanations) frames with the columns of the results database."""
    recs = frame.select([c for c in RECOMMENDATION_COLUMNS if c in frame.columns])
    expl = frame.select([c for c in EXPLANATION_COLUMNS if c in frame.columns])
    return recs, expl
