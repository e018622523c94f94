"""LCER's early-stop rule replayed on one recorded run: what any rule would return and save.

A run without early stop is recorded step by step (the scores and sampled sets of every
pair). A rule (patience, min delta) is then applied to each pair's losses, giving its stop
step and its best set before it, exactly as :class:`~lcer_core.explainers.LCER` does with that
rule (``tests/test_lcer.py`` checks both against a plain-Python reading of the rule). One run
thus measures the trade-off of every rule (pair-steps saved against how the answers change)
and the bound of an oracle that stops each pair right after its last improvement.
``scripts/early_stop_replay.py`` prints these tables for a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import LCER, LCERConfig
from lcer_core.explainers.lcer import lcer_loss, patience_update
from lcer_core.explanations import Explanations
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender
from lcer_core.recommender.recording import RecordingRecommender

__all__ = ["RecordedRun", "record_run"]


@dataclass(frozen=True)
class RecordedRun:
    """Every step of one LCER run: ``scores: [T, P]``, ``removed: [T, N]`` (flat over
    ``pairs.mask``), for ``pairs`` in the order LCER optimised them (by history length);
    all on the CPU."""

    pairs: PairBatch
    scores: Tensor
    removed: Tensor
    alpha: float
    lam: float

    @cached_property
    def losses(self) -> Tensor:
        """``[T, P]``: each pair's loss at each step, as LCER computes it."""
        lengths = torch.zeros_like(self.scores).index_add_(1, self._pair_of(), self.removed.float())
        return lcer_loss(self.scores, lengths, self.pairs.thresholds, self.alpha, self.lam)[1]

    def stop_steps(self, patience: int, min_delta: float = 0.0) -> Tensor:
        """``[P]``: steps each pair runs under the rule (all of them where it never fires)."""
        if patience < 1:
            raise InvalidParameterError(f"patience must be >= 1, got {patience}")
        losses = self.losses
        n_steps, n_pairs = losses.shape
        ref = torch.full((n_pairs,), float("inf"))
        since = torch.zeros(n_pairs, dtype=torch.long)
        stop = torch.full((n_pairs,), n_steps, dtype=torch.long)
        done = torch.zeros(n_pairs, dtype=torch.bool)
        for t in range(n_steps):  # vectorised over pairs; the rule is sequential in steps
            ref, since = patience_update(losses[t], ref, since, ~done, min_delta)
            newly = (since >= patience) & ~done
            stop[newly] = t + 1
            done |= newly
        return stop

    def oracle_steps(self) -> Tensor:
        """``[P]``: steps up to and including each pair's last improvement (hindsight): the
        least any rule could run and still return every pair's full-run answer."""
        return self.losses.argmin(0) + 1  # argmin gives the first minimum, as LCER keeps

    def explanations(self, stops: Tensor | None = None) -> Explanations:
        """What each pair returns when it runs ``stops`` steps (all of them by default);
        importance is not recorded (NaN)."""
        losses = self.losses
        n_steps, n_pairs = losses.shape
        if stops is None:
            stops = torch.full((n_pairs,), n_steps, dtype=torch.long)
        steps = torch.arange(n_steps)[:, None]
        best = torch.where(steps < stops[None], losses, float("inf")).argmin(0)  # [P]
        flat = self.removed[best[self._pair_of()], torch.arange(self.removed.shape[1])]
        found = self.scores[best, torch.arange(n_pairs)] < self.pairs.thresholds
        mask = self.pairs.mask
        removed = torch.zeros_like(mask).masked_scatter(mask, flat) & found[:, None]
        return Explanations(removed, torch.full(mask.shape, float("nan")), stops)

    def _pair_of(self) -> Tensor:
        counts = self.pairs.mask.sum(1)
        return torch.repeat_interleave(torch.arange(len(self.pairs), device=counts.device), counts)


def record_run(
    recommender: Recommender, pairs: PairBatch, config: LCERConfig, *, seed: int = 0
) -> RecordedRun:
    """Run LCER without early stop on ``pairs`` (one batch) and record every step."""
    if len(pairs) > config.max_pairs:
        raise InvalidParameterError(
            f"record at most max_pairs={config.max_pairs} pairs at once, got {len(pairs)}"
        )
    ordered = pairs.select(torch.argsort(pairs.lengths, stable=True)).to(recommender.device)
    recorder = RecordingRecommender(recommender)
    LCER(replace(config, patience=0)).explain(recorder, ordered, seed=seed)
    return RecordedRun(
        ordered.to("cpu"),
        torch.stack(recorder.scored).cpu(),
        torch.stack(recorder.removed).cpu(),
        config.alpha,
        config.lam,
    )
