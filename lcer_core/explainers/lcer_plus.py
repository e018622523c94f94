"""LCER+: LCER's learned search, with its answer chosen and shrunk by the real top-K test.

Not in the paper. LCER (``lcer``) is kept faithful; this method runs the same optimisation
and changes what happens around it, each step behind its own switch so that each can be
measured alone (docs/results.md, "lcer-plus"):

1. **a pool of sampled sets** (``candidates``): the lowest-loss distinct removal sets
   sampled during the optimisation, not only the single lowest-loss one;
2. **an importance prefix** (``prefix``): the shortest set of the most important items
   (learned removal probability, descending) that passes the test, by a batched bisection;
3. **the top-K test** (``select="topk"``): a set counts when the item really leaves the
   re-ranked top-K (the PN test), instead of LCER's factual threshold g_{K+1}(x_f);
4. **sufficiency-aware choice** (``sufficiency``): among the sets that pass, a set whose items
   alone keep the item in the top-K (the PS test) counts this many items shorter;
5. **pruning** (``prune``): items of the chosen set are put back, one per round and the one
   whose return leaves the lowest margin, while the set still passes (and, with
   ``sufficiency``, stays sufficient if it was): the answer is 1-minimal;
6. **restarts** (``restarts``): independent initialisations and noise streams, optimised
   together in one batch; their sets join one pool.

With ``select="threshold"``, ``candidates=1``, no prefix, no pruning and one restart it gives
LCER's answers exactly. Every test is one batched forward call over all pairs (and sets) of
the shard; ``Explanations.forward_calls`` counts the recommender inputs scored per pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers.base import Explainer, Explanations, Progress
from lcer_core.explainers.influence import DEFAULT_CHUNK_MB
from lcer_core.explainers.lcer import (
    LCERConfig,
    _check_finite,
    _initial_logits,
    _noise,
    _pair_keys,
    _streams,
    lcer_loss,
)
from lcer_core.explainers.registry import register
from lcer_core.explainers.selector import (
    DEFAULT_SUFFICIENCY,
    Selector,
    SelectsWithSelector,
    check_selection,
    lexmin,
)
from lcer_core.noise import mix
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = ["LCERPlus", "LCERPlusConfig"]

_INF = float("inf")


@dataclass(frozen=True)
class LCERPlusConfig(LCERConfig):
    """LCER's hyperparameters (α, λ, steps, lr, τ) and the switches of the steps around it."""

    budget_option: ClassVar[str | None] = "candidates"
    #: What a run or ``lcer tune`` may set: LCER's options, the pool size and the PS bonus.
    options: ClassVar[tuple[str, ...]] = ("alpha", "lam", "steps", "candidates", "sufficiency")

    #: ``"topk"``: a set counts when the item leaves the re-ranked top-K; ``"threshold"``:
    #: when its score falls under g_{K+1}(x_f), as in LCER.
    select: Literal["topk", "threshold"] = "topk"
    #: Lowest-loss distinct sampled sets kept per pair and restart (1: LCER's best only).
    candidates: int = 8
    #: Add the shortest passing prefix of the items by learned importance (bisection).
    prefix: bool = True
    #: Sets whose items alone keep the item in the top-K count this many items shorter.
    sufficiency: float = DEFAULT_SUFFICIENCY
    #: Put items of the chosen set back while it still passes (1-minimal answer).
    prune: bool = True
    #: Independent initialisations optimised together (each one LCER run).
    restarts: int = 1
    #: With ``select="topk"``, a pair whose candidates all fail the test gets LCER's own
    #: answer (the shortest sampled set under the threshold) instead of no set.
    fallback: bool = True
    #: Memory bound of one batched recommender call in the tests, in MiB.
    chunk_mb: float = DEFAULT_CHUNK_MB

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warm_start:
            raise InvalidParameterError(
                "lcer-plus has no warm start (warm_start is LCER's)", param="warm_start"
            )
        check_selection(self)
        if not (isinstance(self.candidates, int) and 1 <= self.candidates <= 64):
            raise InvalidParameterError(
                f"candidates must be an integer in [1, 64], got {self.candidates}"
            )
        if not (isinstance(self.restarts, int) and 1 <= self.restarts <= 16):
            raise InvalidParameterError(
                f"restarts must be an integer in [1, 16], got {self.restarts}"
            )
        if self.patience:
            raise InvalidParameterError("lcer-plus has no early stop (patience must be 0)")


@register
class LCERPlus(SelectsWithSelector, Explainer):
    """LCER's optimisation (Zhang et al., Algorithm 1) with the answer chosen among the sampled
    sets and an importance prefix by the re-ranked top-K test, made sufficiency-aware and
    pruned to a 1-minimal set; registered as ``lcer-plus``. See the module docstring."""

    name: ClassVar[str] = "lcer-plus"
    prefers_gpu: ClassVar[bool] = True
    # selects on (SelectsWithSelector): the top-K test chooses among its sets (select="topk")
    # and the PS test makes the choice sufficiency-aware (sufficiency > 0).
    config_type = LCERPlusConfig
    config: LCERPlusConfig

    def _explain(
        self, recommender: Recommender, pairs: PairBatch, *, seed: int, progress: Progress | None
    ) -> Explanations:
        cfg = self.config
        n_pairs, width = pairs.items.shape
        n_rest = cfg.restarts
        # restart r of pair p is row r * P + p; restart 0 draws LCER's own noise
        rep = pairs.select(torch.arange(n_pairs, device=pairs.items.device).repeat(n_rest))
        keys = _pair_keys(pairs).repeat(n_rest)
        rest = torch.arange(n_rest, device=keys.device).repeat_interleave(n_pairs)
        keys = torch.where(rest == 0, keys, mix(keys, rest))
        order = torch.argsort(rep.lengths, stable=True)
        parts = []
        total = len(rep) * cfg.steps
        for start in range(0, len(rep), cfg.max_pairs):
            idx = order[start : start + cfg.max_pairs]

            def report(done: int, base: int = start * cfg.steps, n: int = len(idx)) -> None:
                if progress is not None:
                    progress(base + done * n, total)

            parts.append(
                (idx, self._optimise(recommender, rep.select(idx), keys[idx], seed, report))
            )
        pool = _Pool.gather(parts, len(rep), width, cfg.candidates, rep.items.device)
        # the restarts' pools side by side: [P, R*C, L]
        sets = pool.sets.reshape(n_rest, n_pairs, -1, width).permute(1, 0, 2, 3)
        sets = sets.reshape(n_pairs, -1, width) & pairs.mask[:, None, :]
        scores = pool.scores.reshape(n_rest, n_pairs, -1).permute(1, 0, 2).reshape(n_pairs, -1)
        importance = pool.importance.reshape(n_rest, n_pairs, width).mean(0)
        calls = torch.full((n_pairs,), n_rest * cfg.steps, dtype=torch.long, device=sets.device)
        return _choose(Selector(recommender, pairs, cfg, calls), cfg, sets, scores, importance)

    @torch.no_grad()
    def _optimise(
        self,
        recommender: Recommender,
        pairs: PairBatch,
        keys: Tensor,
        seed: int,
        progress: Callable[[int], None],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """LCER's loop on ``pairs`` (keys ``keys``), keeping the ``candidates`` lowest-loss
        distinct sampled sets per pair: ``(sets [P, C, L], scores [P, C], importance [P, L])``."""
        cfg = self.config
        dev = pairs.items.device
        n_pairs, width = pairs.items.shape
        n_cand = cfg.candidates
        mask = pairs.mask
        flat_items = pairs.items[mask]
        n_ent = flat_items.shape[0]
        local = torch.repeat_interleave(torch.arange(n_pairs, device=dev), mask.sum(1))
        streams = _streams(seed, keys[local, None], flat_items[:, None])
        init = _initial_logits(streams)
        diff = init[:, 0] - init[:, 1]
        slot0 = streams[:, 0].contiguous()
        m = torch.zeros(n_ent, device=dev)
        v = torch.zeros(n_ent, device=dev)
        item_key = mix(flat_items, 0x5E7) << 20 | (mix(flat_items, 0x5E8) & 0xFFFFF)
        buf = torch.zeros(n_ent, n_cand, dtype=torch.bool, device=dev)
        buf_loss = torch.full((n_pairs, n_cand), _INF, device=dev)
        buf_score = torch.full((n_pairs, n_cand), _INF, device=dev)
        buf_hash = torch.zeros(n_pairs, n_cand, dtype=torch.long, device=dev)
        ent = torch.arange(n_ent, device=dev)
        scorer = recommender.set_scorer_vjp(pairs.items, mask, pairs.targets)
        b1, b2, adam_eps, tau = 0.9, 0.999, 1e-8, cfg.temperature
        for step in range(cfg.steps):
            d = (diff + _noise(slot0, step)) / tau
            soft = torch.sigmoid(d)
            hard = d >= 0
            score = scorer.score_removed(hard)
            length = torch.zeros_like(score).index_add_(0, local, hard.to(score.dtype))
            hinge, loss = lcer_loss(score, length, pairs.thresholds, cfg.alpha, cfg.lam)
            grad_keep = scorer.vjp((hinge > 0).to(score.dtype))
            grad = (cfg.lam - grad_keep) * soft * (1 - soft) / tau
            # the pool: replace the worst kept set by this step's set if lower and new
            h = torch.zeros(n_pairs, dtype=torch.long, device=dev)
            h.index_add_(0, local, item_key * hard.long())
            worst_loss, worst = buf_loss.max(1)
            seen = ((buf_hash == h[:, None]) & (buf_loss < _INF)).any(1)
            ins = (loss < worst_loss) & ~seen
            if bool(ins.any()):
                p = ins.nonzero()[:, 0]
                buf_loss[p, worst[p]] = loss[p]
                buf_score[p, worst[p]] = score[p]
                buf_hash[p, worst[p]] = h[p]
                e = ins[local]
                buf[ent[e], worst[local[e]]] = hard[e]
            t = step + 1
            lr_t = cfg.lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            diff.sub_(2 * lr_t * m / (v.sqrt() + adam_eps))
            if t % 50 == 0 or t == cfg.steps:
                progress(t)
        _check_finite(buf_loss.min(1).values, diff, local, pairs)
        sets = torch.zeros(n_pairs, n_cand, width, dtype=torch.bool, device=dev)
        sets.permute(0, 2, 1)[mask] = buf
        importance = torch.full(mask.shape, float("nan"), device=dev)
        importance = importance.masked_scatter(mask, torch.sigmoid(diff))
        # slots never filled hold empty sets with an infinite score: they never pass
        return sets, buf_score, importance


@dataclass
class _Pool:
    """The sampled sets of every (restart, pair) row, back in the rows' original order."""

    sets: Tensor  # [R*P, C, L]
    scores: Tensor  # [R*P, C]
    importance: Tensor  # [R*P, L]

    @staticmethod
    def gather(
        parts: list[tuple[Tensor, tuple[Tensor, Tensor, Tensor]]],
        n_rows: int,
        width: int,
        n_cand: int,
        dev: torch.device,
    ) -> _Pool:
        """Scatter the optimised chunks (row indices, results) into one pool."""
        sets = torch.zeros(n_rows, n_cand, width, dtype=torch.bool, device=dev)
        scores = torch.full((n_rows, n_cand), _INF, device=dev)
        importance = torch.full((n_rows, width), float("nan"), device=dev)
        for idx, (s, sc, imp) in parts:
            sets[idx, :, : s.shape[2]] = s
            scores[idx] = sc
            importance[idx, : imp.shape[1]] = imp
        return _Pool(sets, scores, importance)


def _choose(
    sel: Selector, cfg: LCERPlusConfig, sets: Tensor, scores: Tensor, importance: Tensor
) -> Explanations:
    """One set per pair among the sampled ``sets [P, C, L]`` (scores ``[P, C]`` from the
    optimisation) and, with ``prefix``, the importance prefix; LCER's answer as the fallback."""
    pairs = sel.pairs
    n_pairs = sets.shape[0]
    dev = sets.device
    if cfg.prefix:
        sets = torch.cat([sets, sel.prefixes(importance[:, None, :])], 1)
        scores = torch.cat([scores, torch.zeros(n_pairs, 1, device=dev)], 1)
    size = sets.sum(2)
    if cfg.select == "threshold" and not cfg.prefix:
        margin = scores - pairs.thresholds[:, None]  # known from the optimisation
    else:
        margin = sel.margins(sets)
    # the pool is ordered by slot, so a tie on size and margin goes to the first slot (LCER's rule)
    chosen, found = sel.choose(sets, margin)
    if cfg.fallback and cfg.select == "topk":
        # the sampled sets under the factual threshold (known without a call): the shortest
        rows = torch.arange(n_pairs, device=dev)
        c = scores.shape[1]
        under = (scores < pairs.thresholds[:, None]) & (size[:, :c] > 0) & ~found[:, None]
        key = torch.stack([size[:, :c].float(), scores], -1).masked_fill(~under[..., None], _INF)
        alt = sets[rows, lexmin(key)] & under.any(1)[:, None]
        chosen = torch.where(found[:, None], chosen, alt)
    return Explanations(chosen, importance, None, sel.calls)
