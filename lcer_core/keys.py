"""Deterministic keys derived from what determines an output (runs, models)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["content_key", "run_key"]


def content_key(payload: dict[str, Any], length: int = 16) -> str:
    """A short sha256 of the canonical JSON of ``payload`` (floats rounded to 10 digits)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 10)
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in sorted(v.items())}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v

    blob = json.dumps(norm(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_key(
    *,
    dataset: str,
    method: str,
    k: int,
    alpha: float | None,
    lam: float | None,
    steps: int | None,
    seed: int,
    model_version: str,
    n_users: int | None = None,
    extra: dict[str, Any] | None = None,
    pairs_version: int = 1,
    split_seed: int | None = None,
) -> str:
    """Key of an explanation run: the same inputs give the same key, so a re-run replaces its rows.

    ``pairs_version`` is how the run's (user, item) pairs were computed; version 1 (the first
    releases) is keyed without the field, so those keys are what they always were.
    ``split_seed`` is named only when it is not the default split (None).
    """
    versioned = {} if pairs_version == 1 else {"pairs": pairs_version}
    split = {} if split_seed is None else {"split_seed": split_seed}
    return content_key(
        {
            **versioned,
            **split,
            "dataset": dataset,
            "method": method,
            "k": k,
            "alpha": alpha,
            "lam": lam,
            "steps": steps,
            "seed": seed,
            "model_version": model_version,
            "n_users": n_users,
            "extra": extra or {},
        }
    )
