"""What an explainer returns, and how it reports progress: core types that metrics, the
store and the API use without importing any explanation method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Explanations", "Progress"]

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while a method works (steps, or queries)."""


@dataclass(frozen=True)
class Explanations:
    """What an explainer found for a :class:`PairBatch`, aligned with its ``items``/``mask``."""

    removed: Tensor  # [P, L] bool: the counterfactual set C (False at padding)
    importance: Tensor  # [P, L] float: per-item importance, NaN where the method has none
    #: [P] long: optimisation steps each pair ran (LCER; fewer than configured with early
    #: stop), None for methods without steps.
    steps: Tensor | None = None
    #: [P] long: recommender inputs scored per pair (where the method counts them), else None.
    forward_calls: Tensor | None = None

    @property
    def found(self) -> Tensor:
        """[P] bool: a non-empty set was returned."""
        return self.removed.any(1)

    @property
    def lengths(self) -> Tensor:
        return self.removed.sum(1)

    def to(self, device: torch.device | str) -> Explanations:
        steps = None if self.steps is None else self.steps.to(device)
        calls = None if self.forward_calls is None else self.forward_calls.to(device)
        return Explanations(self.removed.to(device), self.importance.to(device), steps, calls)

    @staticmethod
    def cat(parts: list[Explanations]) -> Explanations:
        """Concatenate along pairs, padding the item axis to the widest part."""
        width = max(p.removed.shape[1] for p in parts)
        pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
        steps = [p.steps for p in parts]
        calls = [p.forward_calls for p in parts]
        return Explanations(
            torch.cat([pad(p.removed, False) for p in parts]),
            torch.cat([pad(p.importance, float("nan")) for p in parts]),
            None if any(s is None for s in steps) else torch.cat(steps),  # type: ignore[arg-type]
            None if any(c is None for c in calls) else torch.cat(calls),  # type: ignore[arg-type]
        )
