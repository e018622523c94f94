"""``random-prefix``: a matched-compute baseline that learns nothing, then ``lcer-plus``'s selector.

Not in the paper. It asks how much of ``lcer-plus``'s score comes from its learned search and
how much from the selector around it: ``orders`` random orders of each user's history (a hash
of the run's seed, the pair and the item, so the answer is deterministic and independent of
the batch), the shortest passing prefix of each order by a batched bisection, then exactly
``lcer-plus``'s choice among them (:mod:`lcer_core.explainers.selector`: the top-K test,
sufficiency-aware choice, pruning), with its options and defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers.base import Explainer, Explanations, Progress
from lcer_core.explainers.registry import register
from lcer_core.explainers.selector import SelectionConfig, Selector, SelectsWithSelector
from lcer_core.noise import hash_uniform, mix
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = ["RandomPrefix", "RandomPrefixConfig", "MAX_ORDERS"]

#: The most random orders per pair.
MAX_ORDERS = 256
_SALT = 0x52A9D0


@dataclass(frozen=True)
class RandomPrefixConfig(SelectionConfig):
    """``orders``: random orders of the history tried per pair (the search budget); the
    selector's options as ``lcer-plus``'s."""

    budget_option: ClassVar[str | None] = "orders"
    options: ClassVar[tuple[str, ...]] = ("orders", "sufficiency")

    orders: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (
            isinstance(self.orders, int)
            and not isinstance(self.orders, bool)
            and 1 <= self.orders <= MAX_ORDERS
        ):
            raise InvalidParameterError(
                f"orders must be an integer in [1, {MAX_ORDERS}], got {self.orders}",
                param="orders",
            )


@register
class RandomPrefix(SelectsWithSelector, Explainer):
    """Prefixes of random orders of the history, chosen by ``lcer-plus``'s PS-aware selector;
    registered as ``random-prefix``. ``importance``: the share of the orders whose shortest
    passing prefix holds the item."""

    name: ClassVar[str] = "random-prefix"
    config_type = RandomPrefixConfig
    config: RandomPrefixConfig

    def _explain(
        self, recommender: Recommender, pairs: PairBatch, *, seed: int, progress: Progress | None
    ) -> Explanations:
        cfg = self.config
        dev = pairs.items.device
        if progress is not None:
            progress(0, 1)
        keys = mix(pairs.users, pairs.targets)
        order = torch.arange(cfg.orders, device=dev)
        draws = hash_uniform(
            seed, keys[:, None, None], pairs.items[:, None, :], order[None, :, None], _SALT
        )
        draws = draws.masked_fill(~pairs.mask[:, None, :], float("nan"))
        calls = torch.zeros(len(pairs), dtype=torch.long, device=dev)
        sel = Selector(recommender, pairs, cfg, calls)
        candidates = sel.prefixes(draws)  # [P, R, L]
        chosen = sel.select(candidates)
        importance = candidates.float().mean(1).masked_fill(~pairs.mask, float("nan"))
        if progress is not None:
            progress(1, 1)
        return Explanations(chosen, importance, None, sel.calls)
