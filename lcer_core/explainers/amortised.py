"""Amortised LCER: one network, trained once, scores a new pair's history in one forward pass.

Not in the paper. LCER learns fresh removal logits for every (user, item) pair with thousands
of optimisation steps and carries nothing across pairs. Here a small network maps a pair (its
history, its target) to the logits LCER would learn, and is trained once per (recommender,
dataset, K, training config) on the pairs of the dataset's **training users only**, with
LCER's objective: the hinge max(0, α + g_i(x_cf) − g_{K+1}(x_f)) + λ·|C| through the frozen
recommender, sampled with LCER's own straight-through Gumbel estimator (:func:`lcer_loss`,
its noise streams and its gradient of the hard sample, reused from :mod:`.lcer`).

At explanation time one batched forward pass (plus one recommender gradient call, a feature
of the network) ranks each pair's history; the candidate sets are prefixes of that ranking, of
at most ``budget`` lengths up to ``max_length``, checked all at once by the re-ranked top-K
test (:func:`~lcer_core.explainers.influence.evaluate_sets`); the shortest passing prefix is
the answer (none passes: no set). Importance = sigmoid(logit).

**Where the network comes from (the design choice).** ``explain(recommender, pairs)`` sees
neither the dataset nor its training users, and must never train on the pairs it explains.
So the config carries ``network``: the content key (16 hex digits, path-free) of a trained
network, which the explainer loads from ``LCER_HOME/explainers/amortised/<key>/`` (or from
this process's memory, where :func:`lcer_core.amortised_store` keeps what it trained or
loaded). An empty key is a one-line error. Whoever holds the dataset binds the key:
``lcer train-explainer`` trains and saves it, and ``lcer explain --method amortised`` finds it
or trains it first (one line on stderr; ``--no-train`` refuses). The contract suite trains
tiny networks on histories of users it does not explain. The key enters the run key (a
non-default config field), so answers of different networks are never confused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from lcer_core.checks import check_weight
from lcer_core.devices import answer_threads
from lcer_core.errors import InvalidParameterError
from lcer_core.explainers.base import Explainer, ExplainerConfig, Explanations, Progress
from lcer_core.explainers.influence import DEFAULT_CHUNK_MB, QueryCounter, evaluate_sets
from lcer_core.explainers.lcer import _noise, _pair_keys, _streams, lcer_loss
from lcer_core.explainers.registry import register
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = [
    "Amortised",
    "AmortisedConfig",
    "AmortisedNet",
    "AmortisedTraining",
    "KEY_PATTERN",
    "features",
    "fit_network",
    "network_logits",
]

#: A network's key: what ``AmortisedConfig.network`` holds (never a path).
KEY_PATTERN = re.compile(r"[0-9a-f]{16}")
_N_SCALARS = 5


@dataclass(frozen=True)
class AmortisedConfig(ExplainerConfig):
    """``network``: the key of the trained network (see the module docstring); ``budget``:
    prefix lengths checked per pair (one recommender input each), spread geometrically over
    1..``max_length``; ``chunk_mb`` bounds one recommender call's memory."""

    network: str = ""
    budget: int = 8
    max_length: int = 16
    chunk_mb: float = DEFAULT_CHUNK_MB

    options: ClassVar[tuple[str, ...]] = ("budget", "max_length")
    budget_option: ClassVar[str | None] = "budget"
    model_bound: ClassVar[tuple[str, ...]] = ("network",)

    def __post_init__(self) -> None:
        if not (isinstance(self.network, str) and (not self.network or _is_key(self.network))):
            raise InvalidParameterError(
                f"network must be a network key (16 hex digits), got {self.network!r}",
                param="network",
            )
        for name in ("budget", "max_length"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096):
                raise InvalidParameterError(
                    f"{name} must be an integer in 1..4096, got {value!r}", param=name
                )
        if not (isinstance(self.chunk_mb, (int, float)) and self.chunk_mb > 0):
            raise InvalidParameterError(
                f"chunk_mb must be positive, got {self.chunk_mb}", param="chunk_mb"
            )


def _is_key(value: str) -> bool:
    return KEY_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True)
class AmortisedTraining:
    """How a network is trained: LCER's α, λ and temperature; Adam's ``lr``; ``epochs`` over
    the training pairs (``max_pairs`` of them at most, a seeded sample; None: all), ``batch``
    pairs per step; the network's ``dim`` (item embeddings) and ``hidden`` width; ``seed``."""

    alpha: float = 0.1
    lam: float = 0.01
    temperature: float = 1.0
    lr: float = 3e-3
    epochs: int = 8
    batch: int = 128
    max_pairs: int | None = None
    dim: int = 16
    hidden: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_weight("alpha", self.alpha))
        object.__setattr__(self, "lam", check_weight("lam", self.lam))
        for name in ("temperature", "lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise InvalidParameterError(f"{name} must be positive, got {value}", param=name)
        for name in ("epochs", "batch", "dim", "hidden"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise InvalidParameterError(
                    f"{name} must be a positive integer, got {value!r}", param=name
                )
        if self.max_pairs is not None and not (
            isinstance(self.max_pairs, int) and self.max_pairs >= 1
        ):
            raise InvalidParameterError(
                f"max_pairs must be a positive integer or None, got {self.max_pairs!r}",
                param="max_pairs",
            )
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise InvalidParameterError(f"seed must be an integer >= 0, got {self.seed!r}")

    def dump(self) -> dict[str, object]:
        """Every field by name: the network's key and its ``train.json``."""
        return asdict(self)


class AmortisedNet(nn.Module):
    """Per history item: [e_j ⊙ t, e_j, mean of the history's e, 5 recommender features] -> MLP
    -> the removal logit (remove − keep, LCER's ``diff``), added to a learned affine function of
    the first-order share (feature 0). e: item embeddings, t: the target's."""

    def __init__(self, n_items: int, dim: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.item = nn.Embedding(n_items, dim)
        self.target = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.normal_(self.target.weight, std=0.1)
        self.mlp = nn.Sequential(
            nn.Linear(3 * dim + _N_SCALARS, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        # Residual on the first-order share (feature 0): untrained, the network ranks a history
        # as the recommender's gradient does; training only learns the correction.
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.scale = nn.Parameter(torch.tensor(4.0))
        self.bias = nn.Parameter(torch.tensor(-2.0))

    @property
    def n_items(self) -> int:
        return int(self.item.weight.shape[0])

    def forward(self, items: Tensor, mask: Tensor, targets: Tensor, scalars: Tensor) -> Tensor:
        """Logits ``[P, L]`` (−inf at padding) for ``items/mask [P, L]``, ``targets [P]``,
        ``scalars [P, L, 5]`` (:func:`features`)."""
        e = self.item(items)  # [P, L, D]
        t = self.target(targets)[:, None, :].expand_as(e)
        m = mask[..., None].to(e.dtype)
        ctx = ((e * m).sum(1) / m.sum(1).clamp_min(1))[:, None, :].expand_as(e)
        out = self.mlp(torch.cat([e * t, e, ctx, scalars], -1))[..., 0]
        out = out + self.scale * scalars[..., 0] + self.bias
        return out.masked_fill(~mask, float("-inf"))


@torch.no_grad()
def features(recommender: Recommender, pairs: PairBatch, alpha: float) -> Tensor:
    """``[P, L, 5]`` per history item, from one gradient call of the recommender: the first-order
    drop of the target's score when the item is removed (g_j = ∂g_i/∂x_j) as a share of the
    drop the pair needs (g_i − g_{K+1} + α), relative to the pair's largest, its rank within
    the pair, the need itself and log(history length)."""
    mask = pairs.mask
    scorer = recommender.set_scorer_vjp(pairs.items, mask, pairs.targets)
    score = scorer(torch.ones(int(mask.sum()), device=mask.device))
    grad = torch.zeros(mask.shape, device=mask.device).masked_scatter(
        mask, scorer.vjp(torch.ones_like(score))
    )
    need = (score - pairs.thresholds).clamp_min(0) + alpha  # [P]
    share = (grad / need[:, None]).clamp(-8, 8)
    top = grad.abs().masked_fill(~mask, 0).amax(1, keepdim=True).clamp_min(1e-12)
    rel = grad / top
    n = mask.sum(1, keepdim=True).clamp_min(1)
    order = torch.argsort(grad.masked_fill(~mask, -math.inf), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(mask.shape[1], device=mask.device).expand_as(order)
    )
    pct = rank.float() / n
    scalars = torch.stack(
        [
            share,
            rel,
            pct,
            torch.log1p(need)[:, None].expand_as(grad),
            torch.log1p(n.float()).expand_as(grad),
        ],
        -1,
    )
    return scalars.masked_fill(~mask[..., None], 0.0)


def network_logits(
    net: AmortisedNet, recommender: Recommender, pairs: PairBatch, alpha: float, chunk: int = 4096
) -> Tensor:
    """The network's logits ``[P, L]`` for ``pairs``, ``chunk`` pairs per call (no grad)."""
    out = torch.full(pairs.mask.shape, -math.inf, device=pairs.mask.device)
    with torch.no_grad():
        for s in range(0, len(pairs), chunk):
            sub = pairs.select(slice(s, s + chunk))
            w = sub.items.shape[1]
            out[s : s + chunk, :w] = net(
                sub.items, sub.mask, sub.targets, features(recommender, sub, alpha)
            )
    return out


def _all_features(
    recommender: Recommender, pairs: PairBatch, alpha: float, chunk: int = 1024
) -> Tensor:
    """:func:`features` of every pair, ``chunk`` pairs per recommender call: ``[P, L, 5]``."""
    out = torch.zeros(*pairs.mask.shape, _N_SCALARS, device=pairs.mask.device)
    for s in range(0, len(pairs), chunk):
        sub = pairs.select(slice(s, s + chunk))
        out[s : s + chunk, : sub.items.shape[1]] = features(recommender, sub, alpha)
    return out


def fit_network(
    recommender: Recommender,
    pairs: PairBatch,
    training: AmortisedTraining,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[AmortisedNet, list[float]]:
    """Train a network on ``pairs`` (the training users' pairs) with LCER's objective; returns
    it (on the CPU, eval mode) and the mean loss of each epoch. Deterministic for a seed."""
    cfg = training
    dev = recommender.device
    pairs = pairs.to(dev)
    with answer_threads(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = AmortisedNet(recommender.n_items, cfg.dim, cfg.hidden).to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.max_pairs is not None and cfg.max_pairs < len(pairs):
        pairs = pairs.select(torch.randperm(len(pairs), generator=gen)[: cfg.max_pairs].to(dev))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scalars = _all_features(recommender, pairs, cfg.alpha)
    curve: list[float] = []
    tau, step = cfg.temperature, 0
    with answer_threads():
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(pairs), generator=gen).to(dev)
            total = 0.0
            for s in range(0, len(pairs), cfg.batch):
                idx = perm[s : s + cfg.batch]
                sub = pairs.select(idx)
                w = sub.items.shape[1]
                logits = net(sub.items, sub.mask, sub.targets, scalars[idx, :w])
                flat = logits[sub.mask]
                with torch.no_grad():
                    pair_of = torch.repeat_interleave(
                        torch.arange(len(sub), device=dev), sub.mask.sum(1)
                    )
                    slot0 = _streams(
                        cfg.seed, _pair_keys(sub)[pair_of, None], sub.items[sub.mask][:, None]
                    )[:, 0].contiguous()
                    d = (flat.detach() + _noise(slot0, step)) / tau
                    soft, hard = torch.sigmoid(d), d >= 0
                    scorer = recommender.set_scorer_vjp(sub.items, sub.mask, sub.targets)
                    score = scorer.score_removed(hard)
                    length = torch.zeros_like(score).index_add_(0, pair_of, hard.to(score.dtype))
                    hinge, loss = lcer_loss(score, length, sub.thresholds, cfg.alpha, cfg.lam)
                    grad_keep = scorer.vjp((hinge > 0).to(score.dtype))
                    grad = (cfg.lam - grad_keep) * soft * (1 - soft) / tau
                opt.zero_grad(set_to_none=True)
                flat.backward(grad / len(sub))
                opt.step()
                total += float(loss.sum())
                step += 1
            curve.append(total / max(len(pairs), 1))
            if on_epoch is not None:
                on_epoch(epoch + 1, curve[-1])
    return net.cpu().eval(), curve


def prefix_lengths(budget: int, max_length: int) -> list[int]:
    """At most ``budget`` distinct prefix lengths in 1..``max_length``, spread geometrically."""
    if budget >= max_length:
        return list(range(1, max_length + 1))
    if budget == 1:
        return [1]
    ratio = max_length ** (1 / (budget - 1))
    return sorted({max(1, round(ratio**i)) for i in range(budget)})


@register
class Amortised(Explainer):
    """Amortised LCER (not in the paper; module docstring): a network trained once on the
    training users' pairs with LCER's objective ranks a pair's history in one forward pass;
    the answer is the shortest prefix of that ranking, among ``budget`` lengths, that takes the
    item out of the re-ranked top-K. No randomness at explanation time (``seed`` is unused)."""

    name: ClassVar[str] = "amortised"
    selects_on: ClassVar[frozenset[str]] = frozenset({"topk"})
    config_type: ClassVar[type[ExplainerConfig]] = AmortisedConfig
    config: AmortisedConfig

    def _explain(
        self, recommender: Recommender, pairs: PairBatch, *, seed: int, progress: Progress | None
    ) -> Explanations:
        from lcer_core.amortised_store import load_network

        cfg = self.config
        net, training = load_network(cfg.network, n_items=recommender.n_items)
        net = net.to(recommender.device)
        lengths = prefix_lengths(cfg.budget, cfg.max_length)
        counter = QueryCounter(progress, len(pairs) * (1 + len(lengths)))
        logits = network_logits(net, recommender, pairs, training.alpha)
        counter.add(len(pairs))
        dev = pairs.items.device
        order = torch.argsort(logits, dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=dev).expand_as(order)
        )
        n_hist = pairs.lengths
        ls = torch.as_tensor(lengths, device=dev)
        ok = ls[None, :] <= n_hist[:, None]  # [P, B]: a prefix no longer than the history
        e_pair, e_len = ok.nonzero(as_tuple=True)
        length_of = ls[e_len]

        def make_removed(e: Tensor) -> Tensor:
            return rank[e_pair[e]] < length_of[e][:, None]

        passes = torch.zeros(ok.shape, dtype=torch.bool, device=dev)
        if e_pair.numel():
            res = evaluate_sets(
                recommender, pairs, e_pair, make_removed, chunk_mb=cfg.chunk_mb,
                progress=counter.add,
            )  # fmt: skip
            passes[e_pair, e_len] = res.out_of_top_k
        found = passes.any(1)
        best = ls[passes.long().argmax(1)]  # the first (shortest) passing length
        removed = (rank < best[:, None]) & pairs.mask & found[:, None]
        counter.finish()
        importance = torch.sigmoid(logits).masked_fill(~pairs.mask, float("nan"))
        return Explanations(removed, importance)
