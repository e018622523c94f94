"""Prefect tasks for datasets: download-and-prepare (retried on download faults), the test users."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lcer_core import pairs
from lcer_core.datasets import load_prepared, prepare_dataset
from lcer_core.errors import DownloadError

__all__ = ["prepare", "test_users"]


def _download_failed(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only when the download itself failed (not on bad names or bad data)."""
    try:
        state.result()
    except DownloadError:
        return True
    except Exception:
        return False
    return False


@task(
    name="prepare-dataset",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_download_failed,
)
def prepare(dataset: str, split_seed: int | None = None) -> dict[str, Any]:
    """Download (or take from the mirror), filter and split ``dataset`` (with ``split_seed``:
    that split); its Table 1 statistics."""
    result = prepare_dataset(
        dataset, progress=False, log=get_run_logger().info, split_seed=split_seed
    )
    return dict(result.stats)


@task(name="test-users", cache_policy=NO_CACHE)
def test_users(
    dataset: str, n_users: int | None = None, split_seed: int | None = None
) -> list[int]:
    """Internal ids of the first ``n_users`` test users of ``dataset`` (of its split
    ``split_seed``; all by default)."""
    users = pairs.test_users(load_prepared(dataset, split_seed), n_users)
    get_run_logger().info("%s: %d test users to explain", dataset, len(users))
    return users
