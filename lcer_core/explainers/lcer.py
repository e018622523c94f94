"""LCER: learning-based counterfactual explanations (the paper, section 3.2.2, Algorithm 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lcer_core.checks import MAX_WEIGHT, check_steps, check_weight
from lcer_core.errors import InvalidParameterError, NonFiniteScoresError
from lcer_core.explainers.base import Explainer, ExplainerConfig, Explanations, Progress
from lcer_core.explainers.registry import register
from lcer_core.noise import mix, stream_logistic, stream_uniform
from lcer_core.pairs import PairBatch
from lcer_core.paper import PAPER_LCER_PARAMS
from lcer_core.recommender.base import Recommender

__all__ = ["LCER", "LCERConfig", "lcer_loss", "lcer_reference_loop", "patience_update"]


@dataclass(frozen=True)
class LCERConfig(ExplainerConfig):
    """α: hinge margin on the logit scale; λ: weight of the length term; Adam on the logits."""

    alpha: float = 0.1
    lam: float = 0.01
    steps: int = 3000
    lr: float = 1e-3
    temperature: float = 1.0
    #: Opt-in early stop: a pair is finished once its best loss has not improved for this
    #: many steps (0 = off, the paper's fixed number of steps).
    patience: int = 0
    #: With early stop, only a drop of the loss by more than this restarts the count (the
    #: state with the lowest loss is kept either way); e.g. λ/2, half the cost of one item.
    min_delta: float = 0.0
    #: Pairs optimised together at most; bounds memory (a few hidden-size vectors per pair).
    max_pairs: int = 8192
    #: Warm start: the key of a trained amortised network (:mod:`.amortised`) whose logits
    #: start the optimisation instead of the reference's uniform draw ("" = the paper's start).
    warm_start: str = ""

    #: α, λ and the number of steps come from the command line / the flow parameters.
    options: ClassVar[tuple[str, ...]] = ("alpha", "lam", "steps")
    #: One run per (α, λ), each stored in the ``alpha`` and ``lam`` columns of ``runs``.
    grid: ClassVar[tuple[str, ...]] = ("alpha", "lam")

    @classmethod
    def defaults_for(cls, dataset: str) -> dict[str, Any]:
        """The paper's α and λ for ``dataset`` (section 4.1), ML 100K's for any other."""
        return dict(PAPER_LCER_PARAMS.get(dataset, PAPER_LCER_PARAMS["ml-100k"]))

    def __post_init__(self) -> None:
        # floats, so that a config built from an int keys and dumps as the same run
        object.__setattr__(self, "alpha", check_weight("alpha", self.alpha))
        object.__setattr__(self, "lam", check_weight("lam", self.lam))
        check_steps(self.steps)
        if not self.lr > 0:
            raise InvalidParameterError(f"lr must be positive, got {self.lr}", param="lr")
        if not self.temperature > 0:
            raise InvalidParameterError(
                f"temperature must be positive, got {self.temperature}", param="temperature"
            )
        if not (isinstance(self.patience, int) and self.patience >= 0):
            raise InvalidParameterError(
                f"patience must be an integer >= 0, got {self.patience}", param="patience"
            )
        if not (self.min_delta >= 0 and self.min_delta < MAX_WEIGHT):
            raise InvalidParameterError(
                f"min_delta must be a number >= 0, got {self.min_delta}", param="min_delta"
            )
        from lcer_core.explainers.amortised import KEY_PATTERN

        if not (
            isinstance(self.warm_start, str)
            and (not self.warm_start or KEY_PATTERN.fullmatch(self.warm_start))
        ):
            raise InvalidParameterError(
                f"warm_start must be a network key (16 hex digits) or empty, got "
                f"{self.warm_start!r}",
                param="warm_start",
            )
        if not (isinstance(self.max_pairs, int) and self.max_pairs >= 1):
            raise InvalidParameterError(
                f"max_pairs must be a positive integer, got {self.max_pairs}", param="max_pairs"
            )


def lcer_loss(
    score: Tensor, length: Tensor, threshold: Tensor, alpha: float, lam: float
) -> tuple[Tensor, Tensor]:
    """LCER's hinge α + g_i(x_cf) − g_{K+1}(x_f) and loss max(0, hinge) + λ·|C|."""
    hinge = alpha + score - threshold
    return hinge, hinge.clamp_min(0) + lam * length


def patience_update(
    loss: Tensor, ref: Tensor, since: Tensor, running: Tensor, min_delta: float
) -> tuple[Tensor, Tensor]:
    """One step of the early-stop rule: a running pair whose loss drops more than ``min_delta``
    below its reference takes that loss as its reference and restarts its count; every other
    count goes on (a finished pair never restarts). Returns the new (reference, count)."""
    gain = (loss < ref - min_delta) & running
    return torch.where(gain, loss, ref), torch.where(gain, 0, since + 1)


def _pair_keys(pairs: PairBatch) -> Tensor:
    return mix(pairs.users, pairs.targets)


def _streams(seed: int, keys: Tensor, items: Tensor) -> Tensor:
    """One random stream per (seed, pair, interacted item, slot): [..., 2] hashes."""
    return mix(seed, keys, items, torch.arange(2, device=items.device))


def _noise(slot0: Tensor, step: int) -> Tensor:
    """The Gumbel-softmax noise of ``step`` on the logit difference (remove − keep), a pure
    function of (seed, pair, step, item): the difference of the two logits' Gumbel(0, 1) draws
    is a standard logistic variable, drawn directly from the streams of slot 0."""
    return stream_logistic(slot0, step)


def _initial_logits(streams: Tensor) -> Tensor:
    """Logits initialised uniformly in [0, 1), as the reference does."""
    return stream_uniform(streams, -1)


@register
class LCER(Explainer):
    """Learning-based counterfactual explanations (Zhang et al., "Learning-based counterfactual
    explanations for recommendation", Sci. China Inf. Sci., section 3.2.2 and Algorithm 1).

    Every interacted item carries two logits (remove, keep). Each step samples a hard
    indicator with the straight-through Gumbel-softmax, scores x_cf = (1 − e) ⊙ x_f, and
    minimises max(0, α + g_i(x_cf) − g_{K+1}(x_f)) + λ·Σe with Adam. The state with the
    lowest loss is kept; its removed set is the CE if g_i(x_cf) < g_{K+1}(x_f) there. An item's
    importance t is its learned removal probability, softmax of its logits at the end of training.
    All pairs of a batch are optimised together (one Adam state per pair and item, so the
    result equals optimising each pair alone); the noise is a hash of (seed, pair, step,
    item), so the answer does not depend on batching or sharding.
    """

    name = "lcer"
    prefers_gpu = True
    #: None: its acceptance test compares the target's score with the *factual* (K+1)-th score
    #: g_{K+1}(x_f), a fixed number, and never re-ranks the catalogue; the top-K drop-out test
    #: (PN's) re-ranks x \ C, where the other items' scores move too, so the two can disagree.
    selects_on: ClassVar[frozenset[str]] = frozenset()
    config_type = LCERConfig
    config: LCERConfig

    def _explain(
        self, recommender: Recommender, pairs: PairBatch, *, seed: int, progress: Progress | None
    ) -> Explanations:
        cfg = self.config
        # Pairs of similar history length side by side (stable: a user's K pairs stay together),
        # so the recommender's batched first layer pads little; the answer does not depend on it.
        order = torch.argsort(pairs.lengths, stable=True)
        ordered = pairs.select(order)
        parts = []
        for start in range(0, len(pairs), cfg.max_pairs):
            sub = ordered.select(slice(start, start + cfg.max_pairs))

            def report(
                done: int, _total: int, base: int = start * cfg.steps, n: int = len(sub)
            ) -> None:
                if progress is not None:
                    progress(base + done * n, len(pairs) * cfg.steps)

            parts.append(self._optimise(recommender, sub, seed, report))
        out = Explanations.cat(parts)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(pairs), device=order.device)
        width = pairs.items.shape[1]
        return Explanations(
            out.removed[inverse][:, :width],
            out.importance[inverse][:, :width],
            None if out.steps is None else out.steps[inverse],
        )

    @torch.no_grad()
    def _optimise(
        self, recommender: Recommender, pairs: PairBatch, seed: int, progress: Progress
    ) -> Explanations:
        """Optimise all pairs of ``pairs`` together, over their valid entries only (flat [N]).

        With early stopping, the pairs still running are compacted into fresh, contiguous
        state arrays (and a scorer of their own) whenever a fifth of them has finished, so
        every step works on live pairs only and never gathers through index lists.
        """
        cfg = self.config
        dev = pairs.items.device
        n_pairs = len(pairs)
        mask = pairs.mask
        flat_items = pairs.items[mask]  # [N]
        pair_of = torch.repeat_interleave(torch.arange(n_pairs, device=dev), mask.sum(1))  # [N]
        streams = _streams(seed, _pair_keys(pairs)[pair_of, None], flat_items[:, None])  # [N, 2]
        # Only the difference of an item's two logits matters (to the sample and to the
        # importance), and Adam gives the two logits opposite updates of equal size: keep
        # diff = logit_remove - logit_keep and one Adam state per entry.
        init = _initial_logits(streams)  # [N, 2]
        out = _State(
            diff=init[:, 0] - init[:, 1]
            if not cfg.warm_start
            else _warm_start(recommender, pairs, cfg.warm_start),
            m=torch.zeros(flat_items.shape[0], device=dev),
            v=torch.zeros(flat_items.shape[0], device=dev),
            slot0=streams[:, 0].contiguous(),
            best_removed=torch.zeros(flat_items.shape[0], dtype=torch.bool, device=dev),
            best_loss=torch.full((n_pairs,), float("inf"), device=dev),
            best_score=torch.full((n_pairs,), float("inf"), device=dev),
            ref_loss=torch.full((n_pairs,), float("inf"), device=dev),
            since_best=torch.zeros(n_pairs, dtype=torch.long, device=dev),
            steps_run=torch.zeros(n_pairs, dtype=torch.long, device=dev),
            thr=pairs.thresholds.clone(),
            local=pair_of,
        )
        live_pairs = torch.arange(n_pairs, device=dev)  # global ids of the live pairs
        live_ents = torch.arange(flat_items.shape[0], device=dev)
        st = out  # the live state; ``out`` itself while every pair is live
        scorer = recommender.set_scorer_vjp(pairs.items, mask, pairs.targets)
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        tau = cfg.temperature

        for step in range(cfg.steps):
            d = (st.diff + _noise(st.slot0, step)) / tau
            soft = torch.sigmoid(d)  # the 2-way softmax's "remove" probability
            hard = d >= 0  # argmax, ties to "remove" as argmax does
            # straight-through: the forward value is the hard sample, the gradient goes through soft
            score = scorer.score_removed(hard)
            length = torch.zeros_like(score).index_add_(0, st.local, hard.to(score.dtype))
            hinge, loss = lcer_loss(score, length, st.thr, cfg.alpha, cfg.lam)
            # dL/de = -dL/dkeep + λ; de/dsoft = 1; dsoft/d(diff) = soft (1 - soft) / τ.
            grad_keep = scorer.vjp((hinge > 0).to(score.dtype))
            grad = (cfg.lam - grad_keep) * soft * (1 - soft) / tau

            better = loss < st.best_loss
            if cfg.patience:  # a finished pair keeps its state until it is compacted away
                running = st.since_best < cfg.patience
                better &= running
            st.best_loss = torch.where(better, loss, st.best_loss)
            st.best_score = torch.where(better, score, st.best_score)
            st.best_removed = torch.where(better[st.local], hard, st.best_removed)
            if cfg.patience:
                st.ref_loss, st.since_best = patience_update(
                    loss, st.ref_loss, st.since_best, running, cfg.min_delta
                )
            # Adam on both logits, written on their difference (hence the factor 2).
            t = step + 1
            lr_t = cfg.lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
            st.m.mul_(b1).add_(grad, alpha=1 - b1)
            st.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            update = 2 * lr_t * st.m / (st.v.sqrt() + adam_eps)
            if cfg.patience:
                update.mul_(running[st.local])
                st.steps_run += running
            st.diff.sub_(update)
            if cfg.patience and t % 10 == 0 and t < cfg.steps:
                running = st.since_best < cfg.patience
                n_run = int(running.sum())
                if n_run == 0:
                    break
                if n_run <= 0.8 * running.shape[0]:
                    if st is not out:
                        st.write_to(out, live_pairs, live_ents)
                    keep_ent = running[st.local]
                    st = st.select(running, keep_ent)
                    live_pairs, live_ents = live_pairs[running], live_ents[keep_ent]
                    sub = pairs.select(live_pairs)
                    scorer = recommender.set_scorer_vjp(sub.items, sub.mask, sub.targets)
            if t % 50 == 0 or t == cfg.steps:
                progress(t, cfg.steps)
        if st is not out:
            st.write_to(out, live_pairs, live_ents)
        progress(cfg.steps, cfg.steps)

        _check_finite(out.best_loss, out.diff, pair_of, pairs)
        found = out.best_score < pairs.thresholds
        removed = torch.zeros_like(mask).masked_scatter(mask, out.best_removed) & found[:, None]
        importance = torch.full(mask.shape, float("nan"), device=dev)
        importance = importance.masked_scatter(mask, torch.sigmoid(out.diff))
        steps_run = out.steps_run if cfg.patience else torch.full_like(out.steps_run, cfg.steps)
        return Explanations(removed, importance, steps_run)


def _warm_start(recommender: Recommender, pairs: PairBatch, key: str) -> Tensor:
    """The amortised network ``key``'s logits of the valid entries, flat ``[N]``, squashed by
    tanh into (-1, 1), the range of the reference's start: ranking and sign kept, and the
    sigmoid left unsaturated so that the straight-through gradient can still move them."""
    from lcer_core.amortised_store import load_network
    from lcer_core.explainers.amortised import network_logits

    net, training = load_network(key, n_items=recommender.n_items)
    logits = network_logits(net.to(recommender.device), recommender, pairs, training.alpha)
    return torch.tanh(logits[pairs.mask])


@dataclass
class _State:
    """LCER's optimisation state: per entry (flat over the pairs' interacted items) and per pair.

    ``local`` maps each entry to its pair's row in this state.
    """

    diff: Tensor
    m: Tensor
    v: Tensor
    slot0: Tensor
    best_removed: Tensor
    best_loss: Tensor
    best_score: Tensor
    ref_loss: Tensor
    since_best: Tensor
    steps_run: Tensor
    thr: Tensor
    local: Tensor

    _ENTRY: ClassVar[tuple[str, ...]] = ("diff", "m", "v", "slot0", "best_removed")
    _PAIR: ClassVar[tuple[str, ...]] = (
        "best_loss",
        "best_score",
        "ref_loss",
        "since_best",
        "steps_run",
        "thr",
    )

    def select(self, pairs: Tensor, entries: Tensor) -> _State:
        """The state of the pairs flagged in ``pairs`` (bool), whose entries are ``entries``."""
        remap = torch.cumsum(pairs.long(), 0) - 1
        return _State(
            **{f: getattr(self, f)[entries] for f in self._ENTRY},
            **{f: getattr(self, f)[pairs] for f in self._PAIR},
            local=remap[self.local[entries]],
        )

    def write_to(self, out: _State, pairs: Tensor, entries: Tensor) -> None:
        """Copy this state back into ``out`` at global pair ids ``pairs`` and entries ``entries``."""
        for f in self._ENTRY:
            getattr(out, f)[entries] = getattr(self, f)
        for f in self._PAIR:
            getattr(out, f)[pairs] = getattr(self, f)


def _check_finite(best_loss: Tensor, logits: Tensor, pair_of: Tensor, pairs: PairBatch) -> None:
    """Fail loudly if the recommender gave a non-finite score on the way: a pair whose loss was
    never finite, or whose logits a NaN gradient poisoned, has no meaningful CE or importance."""
    bad_entries = (~torch.isfinite(logits)).reshape(logits.shape[0], -1).any(1).long()
    poisoned = torch.zeros_like(best_loss, dtype=torch.long).index_add(0, pair_of, bad_entries)
    bad = ~torch.isfinite(best_loss) | (poisoned > 0)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise NonFiniteScoresError(
            f"the recommender produced non-finite scores while explaining {int(bad.sum())} of "
            f"{bad.shape[0]} pair(s) (first: user {int(pairs.users[first])}, item "
            f"{int(pairs.targets[first])}, internal ids)"
        )


def lcer_reference_loop(
    recommender: Recommender,
    pairs: PairBatch,
    config: LCERConfig,
    *,
    seed: int = 0,
) -> Explanations:
    """The reference implementation's shape: one pair at a time, a full-length importance vector
    over all M items, a dense forward pass and ``torch.optim.Adam``, step after step.

    Kept as the baseline of the benchmark (``lcer bench``); it draws the same noise as
    :class:`LCER`, so both give the same explanations up to floating-point rounding.
    """
    dev = recommender.device
    pairs = pairs.to(dev)
    n_items = recommender.n_items
    all_items = torch.arange(n_items, device=dev)
    removed = torch.zeros_like(pairs.mask)
    importance = torch.full(pairs.mask.shape, float("nan"), device=dev)
    keys = _pair_keys(pairs)
    for p in range(len(pairs)):
        x = torch.zeros(1, n_items, device=dev)
        own = pairs.items[p][pairs.mask[p]]
        x[0, own] = 1.0
        streams = _streams(seed, keys[p : p + 1, None], all_items[:, None])  # [M, 2]
        delta = _initial_logits(streams).clone().requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=config.lr, fused=True)
        slot0 = streams[:, 0].contiguous()
        best_loss, best_score, best_set = float("inf"), float("inf"), None
        for step in range(config.steps):
            gumbel = F.pad(_noise(slot0, step)[:, None], (0, 1))  # [M, 2]: (logistic, 0)
            soft = F.softmax((delta + gumbel) / config.temperature, -1)
            hard = F.one_hot(soft.argmax(-1), 2).to(soft.dtype)
            e = (hard - soft).detach() + soft
            score = recommender.scores(e[:, 1] * x)[0, pairs.targets[p]]
            loss = (
                F.relu(config.alpha + score - pairs.thresholds[p])
                + config.lam * (e[:, 0] * x[0]).sum()
            )
            if float(loss.detach()) < best_loss:
                best_loss, best_score = float(loss.detach()), float(score.detach())
                best_set = (hard[:, 0] > 0.5) & (x[0] > 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert best_set is not None
        n = int(own.numel())
        if best_score < float(pairs.thresholds[p]):
            removed[p, :n] = best_set[own]
        importance[p, :n] = F.softmax(delta.detach(), -1)[own, 0]  # at the end, as LCER
    return Explanations(removed, importance)
