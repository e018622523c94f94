"""LCER: learning-based counterfactual explanations (the paper, section 3.2.2, Algorithm 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lcer_core.errors import InvalidParameterError, NonFiniteScoresError
from lcer_core.explainers.base import Explainer, ExplainerConfig, Explanations, Progress
from lcer_core.noise import mix, stream_logistic, stream_uniform
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = ["LCER", "LCERConfig", "lcer_reference_loop"]


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
    #: Pairs optimised together at most; bounds memory (a few hidden-size vectors per pair).
    max_pairs: int = 8192

    def __post_init__(self) -> None:
        if not (self.alpha >= 0 and self.alpha < 1e6):
            raise InvalidParameterError(f"alpha must be a non-negative number, got {self.alpha}")
        if not (self.lam >= 0 and self.lam < 1e6):
            raise InvalidParameterError(f"lam must be a non-negative number, got {self.lam}")
        if not (isinstance(self.steps, int) and 1 <= self.steps <= 1_000_000):
            raise InvalidParameterError(
                f"steps must be an integer in [1, 1000000], got {self.steps}"
            )
        if not self.lr > 0:
            raise InvalidParameterError(f"lr must be positive, got {self.lr}")
        if not self.temperature > 0:
            raise InvalidParameterError(f"temperature must be positive, got {self.temperature}")
        if self.patience < 0:
            raise InvalidParameterError(f"patience must be >= 0, got {self.patience}")


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
        return Explanations(out.removed[inverse][:, :width], out.importance[inverse][:, :width])

    @torch.no_grad()
    def _optimise(
        self, recommender: Recommender, pairs: PairBatch, seed: int, progress: Progress
    ) -> Explanations:
        """Optimise all pairs of ``pairs`` together, over their valid entries only (flat [N])."""
        cfg = self.config
        dev = pairs.items.device
        n_pairs = len(pairs)
        mask = pairs.mask
        flat_items = pairs.items[mask]  # [N]
        pair_of = torch.repeat_interleave(torch.arange(n_pairs, device=dev), mask.sum(1))  # [N]
        streams = _streams(seed, _pair_keys(pairs)[pair_of, None], flat_items[:, None])  # [N, 2]
        thr = pairs.thresholds

        # Only the difference of an item's two logits matters (to the sample and to the
        # importance), and Adam gives the two logits opposite updates of equal size: keep
        # diff = logit_remove - logit_keep and one Adam state per entry.
        init = _initial_logits(streams)  # [N, 2]
        diff = init[:, 0] - init[:, 1]
        slot0 = streams[:, 0].contiguous()
        m = torch.zeros_like(diff)
        v = torch.zeros_like(diff)
        b1, b2, adam_eps = 0.9, 0.999, 1e-8

        best_loss = torch.full((n_pairs,), float("inf"), device=dev)
        best_score = torch.full((n_pairs,), float("inf"), device=dev)
        best_removed = torch.zeros(flat_items.shape[0], dtype=torch.bool, device=dev)
        since_best = torch.zeros(n_pairs, dtype=torch.long, device=dev)

        # The live set: pairs still optimised (all, unless early stopping drops some).
        act = torch.arange(n_pairs, device=dev)
        ent = torch.arange(flat_items.shape[0], device=dev)
        local = pair_of
        scorer = recommender.set_scorer_vjp(pairs.items, mask, pairs.targets)
        everything = True
        tau = cfg.temperature

        for step in range(cfg.steps):
            # While every pair is live, index with a full slice: views, not gathered copies.
            sel = slice(None) if everything else act
            sel_e = slice(None) if everything else ent
            dd = diff if everything else diff[ent]
            d = (dd + _noise(slot0 if everything else slot0[ent], step)) / tau
            soft = torch.sigmoid(d)  # the 2-way softmax's "remove" probability
            hard = d >= 0  # argmax, ties to "remove" as argmax does
            # straight-through: the forward value is the hard sample, the gradient goes through soft
            score = scorer.score_removed(hard)
            length = torch.zeros(act.shape[0], device=dev, dtype=soft.dtype).index_add_(
                0, local, hard.to(soft.dtype)
            )
            hinge = cfg.alpha + score - thr[sel]
            loss = hinge.clamp_min(0) + cfg.lam * length
            # dL/de = -dL/dkeep + λ; de/dsoft = 1; dsoft/d(diff) = soft (1 - soft) / τ.
            grad_keep = scorer.vjp((hinge > 0).to(score.dtype))
            grad = (cfg.lam - grad_keep) * soft * (1 - soft) / tau

            better = loss < best_loss[sel]
            if cfg.patience:
                better &= since_best[sel] < cfg.patience  # a finished pair keeps its state
            best_loss[sel] = torch.where(better, loss, best_loss[sel])
            best_score[sel] = torch.where(better, score, best_score[sel])
            since_best[sel] = torch.where(better, 0, since_best[sel] + 1)
            best_removed[sel_e] = torch.where(better[local], hard, best_removed[sel_e])
            # Adam on both logits, written on their difference (hence the factor 2).
            t = step + 1
            lr_t = cfg.lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
            if everything:
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                diff.sub_(2 * lr_t * m / (v.sqrt() + adam_eps))
            else:
                m[ent] = b1 * m[ent] + (1 - b1) * grad
                v[ent] = b2 * v[ent] + (1 - b2) * grad * grad
                diff[ent] = dd - 2 * lr_t * m[ent] / (v[ent].sqrt() + adam_eps)
            if cfg.patience and t % 10 == 0:
                live = since_best[act] < cfg.patience
                if not bool(live.any()):
                    progress(cfg.steps, cfg.steps)
                    break
                if int(live.sum()) <= 0.8 * act.shape[0]:  # compact: rebuild for the live pairs
                    act = act[live]
                    keep_pair = torch.zeros(n_pairs, dtype=torch.bool, device=dev)
                    keep_pair[act] = True
                    ent = torch.nonzero(keep_pair[pair_of]).squeeze(1)
                    remap = torch.full((n_pairs,), -1, dtype=torch.long, device=dev)
                    remap[act] = torch.arange(act.shape[0], device=dev)
                    local = remap[pair_of[ent]]
                    scorer = recommender.set_scorer_vjp(
                        pairs.items[act], mask[act], pairs.targets[act]
                    )
                    everything = False
            if t % 50 == 0 or t == cfg.steps:
                progress(t, cfg.steps)

        _check_finite(best_loss, diff, pair_of, pairs)
        found = best_score < thr
        removed = torch.zeros_like(mask).masked_scatter(mask, best_removed) & found[:, None]
        importance = torch.full(mask.shape, float("nan"), device=dev)
        importance = importance.masked_scatter(mask, torch.sigmoid(diff))
        return Explanations(removed, importance)


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
        best_loss, best_score, best_set = float("inf"), float("inf"), None
        for step in range(config.steps):
            gumbel = F.pad(_noise(streams[:, 0], step)[:, None], (0, 1))  # [M, 2]: (logistic, 0)
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
