"""EASE (Steck, WWW 2019): a closed-form item-item model, the second recommender of the pipeline.

``B = I − P·diag(1/diag(P))`` with ``P = (XᵀX + λI)⁻¹``, so that ``diag(B) = 0``; the scores
of a history ``x`` are ``x·B``: linear in ``x``, so removing interacted item ``j`` lowers the
score of item ``c`` by exactly ``B[j, c]`` and every explainer's gradient is exact. Training
is one ``M × M`` inversion: it needs about :data:`BYTES_PER_CELL` bytes per item pair, and a
catalogue whose matrices exceed :data:`MAX_BYTES` is refused in one line before any work.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcer_core.errors import InvalidParameterError
from lcer_core.recommender.base import Recommender, SetScorer
from lcer_core.recommender.registry import RecommenderKind, register
from lcer_core.recommender.training import (
    DENSE_BATCH_CELLS,
    EpochReport,
    InteractionRows,
    evaluate_ranking,
)

__all__ = [
    "BYTES_PER_CELL",
    "EASE",
    "EASEConfig",
    "EASEKind",
    "EASERecommender",
    "MAX_BYTES",
    "ease_weights",
]

#: Bytes training holds per item pair: the Gram matrix, its LU factor and its inverse in float64
#: (8 + 8 + 8), the float32 weights (4), and 4 to spare (the evaluation's batches): 8 float32 cells.
BYTES_PER_CELL = 4 * 8
#: The most memory EASE's training may ask for: 8 GiB, a catalogue of at most 16,384 items
#: (ML 1M's 3,416 items need 0.37 GB; Epinions' 115,798 would need 400 GiB).
MAX_BYTES = 8 * 2**30


@dataclass(frozen=True)
class EASEConfig:
    """EASE's one hyperparameter: the L2 penalty λ (Steck's default for ML 20M and Netflix)."""

    lam: float = 500.0

    def __post_init__(self) -> None:
        if not (isinstance(self.lam, (int, float)) and 0 < self.lam < math.inf):
            raise InvalidParameterError(f"lam must be > 0, got {self.lam}", param="lam")


def check_catalogue(n_items: int) -> None:
    """Refuse, in one line, a catalogue whose ``M × M`` matrices do not fit :data:`MAX_BYTES`."""
    need = n_items * n_items * BYTES_PER_CELL
    if need > MAX_BYTES:
        most = math.isqrt(MAX_BYTES // BYTES_PER_CELL)
        raise InvalidParameterError(
            f"EASE needs an item × item matrix: {n_items:,} items need about "
            f"{need / 2**30:.1f} GiB, over its limit of {MAX_BYTES / 2**30:.0f} GiB "
            f"(at most {most:,} items); use --recommender multvae",
            param="recommender",
        )


def ease_weights(gram: Tensor, lam: float) -> Tensor:
    """``B`` from the Gram matrix ``XᵀX`` (float64; consumed): ``I − P·diag(1/diag(P))``, ``diag(B) = 0``."""
    gram.diagonal().add_(lam)
    p = torch.linalg.inv(gram)  # SPD, but torch's cholesky_inverse is ~10x slower on CPU
    del gram
    b = p.div_(-p.diagonal().clone()[None, :])  # −P_ij / P_jj
    b.diagonal().zero_()
    return b


class EASE(nn.Module):
    """The weights ``B: [M, M]`` as a frozen parameter; ``forward(x) = x @ B``."""

    def __init__(self, n_items: int, config: EASEConfig | None = None) -> None:
        super().__init__()
        self.n_items = n_items
        self.weight = nn.Parameter(torch.zeros(n_items, n_items), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight


def _gram(train: Tensor | InteractionRows, device: torch.device | str) -> Tensor:
    """``XᵀX`` as float64, one dense batch of rows at a time; summed in float32, exact for 0/1
    rows below 2²⁴ users (counts are integers) and twice as fast."""
    n_users, n_items = train.shape
    gram = torch.zeros(n_items, n_items, device=device)
    step = max(1, DENSE_BATCH_CELLS // max(n_items, 1))
    for start in range(0, n_users, step):
        x = train[start : start + step].to(device, torch.float32)
        gram.addmm_(x.t(), x)
    return gram.double()


def _loss(module: EASE, train: Tensor | InteractionRows) -> float:
    """Mean squared reconstruction error per training user, ``‖x − x·B‖²`` (the least-squares term)."""
    n_users, n_items = train.shape
    step = max(1, DENSE_BATCH_CELLS // max(n_items, 1))
    total = 0.0
    dev = module.weight.device
    for start in range(0, n_users, step):
        x = train[start : start + step].to(dev)
        total += float((x - module(x)).pow(2).sum())
    return total / max(n_users, 1)


@register
class EASEKind(RecommenderKind):
    """EASE in the registry: trained in closed form (one report), scored by :class:`EASERecommender`."""

    name = "ease"
    title = "EASE"
    config_type = EASEConfig

    @classmethod
    def check(cls, n_items: int, config: EASEConfig) -> None:
        check_catalogue(n_items)

    @classmethod
    def build(cls, n_items: int, config: EASEConfig) -> nn.Module:
        return EASE(n_items, config)

    @classmethod
    def fit(
        cls,
        train: Tensor | InteractionRows,
        val_fold_in: Tensor | InteractionRows,
        val_heldout: Tensor | InteractionRows,
        *,
        config: EASEConfig,
        seed: int,
        device: torch.device | str,
    ) -> Generator[EpochReport, None, nn.Module]:
        """One closed-form solve (``seed`` plays no part), reported as one epoch."""
        check_catalogue(train.shape[1])
        module = EASE(train.shape[1], config).to(device)
        module.weight.copy_(ease_weights(_gram(train, device), config.lam).float())
        ndcg = evaluate_ranking(module, val_fold_in, val_heldout)["ndcg100"]
        yield EpochReport(1, _loss(module, train), 0.0, ndcg, 1)
        return module.cpu().eval()

    @classmethod
    def recommender(cls, module: nn.Module, device: torch.device | str) -> Recommender:
        assert isinstance(module, EASE)
        return EASERecommender(module, device)


class EASERecommender(Recommender):
    """Scores ``x·B`` of a trained :class:`EASE`; the set paths gather rows of ``B`` only."""

    def __init__(self, model: EASE, device: torch.device | str | None = None) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.n_items = model.n_items

    @property
    def weight(self) -> Tensor:
        return self.model.weight

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def scores(self, x: Tensor) -> Tensor:
        return x.to(self.device) @ self.weight

    def scores_of_sets(
        self, items: Tensor, weights: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        if targets is None:  # Σ_l w[p, l] · B[items[p, l], :]
            return F.embedding_bag(items, self.weight, mode="sum", per_sample_weights=weights)
        cells = self.weight[items[:, :, None], targets[:, None, :]]  # [P, L, T]
        return torch.einsum("pl,plt->pt", weights, cells)

    def set_scorer_vjp(self, items: Tensor, mask: Tensor, targets: Tensor) -> SetScorer:
        """Linear in the weights: each entry's coefficient ``B[item, target]`` once per batch."""
        return _LinearSetScorer(self.weight, items, mask, targets)


class _LinearSetScorer(SetScorer):
    """``score[p] = Σ_n w[n]·B[item_n, target_p]`` over the entries ``n`` of pair ``p``; exact vjp."""

    def __init__(self, weight: Tensor, items: Tensor, mask: Tensor, targets: Tensor) -> None:
        n_pairs = items.shape[0]
        self.pair_of = torch.repeat_interleave(
            torch.arange(n_pairs, device=items.device), mask.sum(1)
        )
        self.coef = weight[items[mask], targets[self.pair_of]]  # [N]
        self.n_pairs = n_pairs

    def __call__(self, flat_weights: Tensor) -> Tensor:
        out = torch.zeros(self.n_pairs, dtype=self.coef.dtype, device=self.coef.device)
        return out.index_add_(0, self.pair_of, flat_weights.detach() * self.coef)

    def vjp(self, upstream: Tensor) -> Tensor:
        return upstream[self.pair_of] * self.coef
