"""Training and evaluating Mult-VAE: the loop lives apart from the network.

:func:`fit_multvae` is a generator of per-epoch reports (the caller logs them: a Prefect
task, MLflow, a progress bar), and returns the best model by validation NDCG@100.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Generator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lcer_core.recommender.base import Recommender
from lcer_core.recommender.multvae import MultVAE, MultVAEConfig, MultVAERecommender
from lcer_core.recommender.registry import RecommenderKind, register

__all__ = [
    "EpochReport",
    "InteractionRows",
    "fit_multvae",
    "ndcg_at",
    "recall_at",
    "evaluate_ranking",
    "DENSE_BATCH_CELLS",
    "MultVAEKind",
]

#: Cells (rows × items) of one dense batch that evaluation may hold: at the paper's largest
#: catalogue (Epinions, 115,798 items) about 430 users at a time, 200 MB of float32.
DENSE_BATCH_CELLS = 50_000_000


class InteractionRows:
    """Binary user × item interactions kept sparse (CSR); indexing gives dense float rows.

    ``rows[index]`` (a slice or a tensor of row numbers) is the ``[B, M]`` 0/1 float matrix
    of those rows, exactly what the dense matrix would give: training and evaluation hold
    one batch densely, never the whole matrix.
    """

    def __init__(self, indptr: Tensor, indices: Tensor, n_items: int) -> None:
        self.indptr = indptr.long()
        self.indices = indices.long()
        self.shape = (int(indptr.numel()) - 1, int(n_items))

    @classmethod
    def from_pairs(cls, rows: Tensor, cols: Tensor, n_rows: int, n_items: int) -> InteractionRows:
        """From the (row, item) pairs of the ones, in any order."""
        order = torch.argsort(rows * n_items + cols)
        counts = torch.bincount(rows, minlength=n_rows)
        indptr = torch.zeros(n_rows + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return cls(indptr, cols[order], n_items)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | Tensor) -> Tensor:
        rows = torch.arange(self.shape[0])[index] if isinstance(index, slice) else index.long()
        start, stop = self.indptr[rows], self.indptr[rows + 1]
        lengths = stop - start
        row_of = torch.repeat_interleave(torch.arange(rows.numel()), lengths)
        first = torch.repeat_interleave(start - (torch.cumsum(lengths, 0) - lengths), lengths)
        cols = self.indices[first + torch.arange(int(lengths.sum()))]
        x = torch.zeros(rows.numel(), self.shape[1])
        x[row_of, cols] = 1.0
        return x


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    loss: float
    beta: float
    val_ndcg100: float
    best_epoch: int


def ndcg_at(scores: Tensor, heldout: Tensor, k: int) -> Tensor:
    """Per-user NDCG@k of ``scores [U, M]`` (fold-in items already at -inf) against ``heldout``."""
    top = torch.topk(scores, k, dim=1).indices
    hits = heldout.gather(1, top)
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float, device=scores.device))
    dcg = (hits * disc).sum(1)
    n_rel = heldout.sum(1).clamp(max=k).long()
    idcg = torch.cumsum(disc, 0)[(n_rel - 1).clamp(min=0)] * (n_rel > 0)
    return torch.where(n_rel > 0, dcg / idcg.clamp_min(1e-12), torch.full_like(dcg, float("nan")))


def recall_at(scores: Tensor, heldout: Tensor, k: int) -> Tensor:
    """Per-user Recall@k, normalised by min(k, #held-out) as in the Mult-VAE paper."""
    top = torch.topk(scores, k, dim=1).indices
    hits = heldout.gather(1, top).sum(1)
    denom = heldout.sum(1).clamp(max=k)
    return torch.where(denom > 0, hits / denom.clamp_min(1), torch.full_like(hits, float("nan")))


@torch.no_grad()
def evaluate_ranking(
    model: nn.Module,
    fold_in: Tensor | InteractionRows,
    heldout: Tensor | InteractionRows,
    batch: int = 2000,
) -> dict[str, float]:
    """NDCG@100, Recall@20 and Recall@50 averaged over users with held-out items."""
    batch = max(1, min(batch, DENSE_BATCH_CELLS // max(fold_in.shape[1], 1)))
    was = model.training
    model.eval()
    out: dict[str, list[Tensor]] = {"ndcg100": [], "recall20": [], "recall50": []}
    dev = next(model.parameters()).device
    for start in range(0, fold_in.shape[0], batch):
        x = fold_in[start : start + batch].to(dev)
        y = heldout[start : start + batch].to(dev)
        s = model(x).masked_fill(x > 0, float("-inf"))
        k100 = min(100, s.shape[1])
        out["ndcg100"].append(ndcg_at(s, y, k100))
        out["recall20"].append(recall_at(s, y, min(20, s.shape[1])))
        out["recall50"].append(recall_at(s, y, min(50, s.shape[1])))
    model.train(was)
    res = {}
    for key, parts in out.items():
        v = torch.cat(parts)
        v = v[~torch.isnan(v)]
        res[key] = float(v.mean()) if v.numel() else math.nan
    return res


def fit_multvae(
    train: Tensor | InteractionRows,
    val_fold_in: Tensor | InteractionRows,
    val_heldout: Tensor | InteractionRows,
    *,
    config: MultVAEConfig | None = None,
    seed: int = 98765,
    device: torch.device | str = "cpu",
) -> Generator[EpochReport, None, MultVAE]:
    """Train Mult-VAE on ``train [U, M]`` (dense, or sparse rows densified one batch at a
    time); yield one :class:`EpochReport` per epoch.

    The KL weight grows linearly to ``anneal_cap`` over ``total_anneal_steps`` updates;
    the returned model is the epoch with the best validation NDCG@100 (in eval mode, on CPU).
    """
    cfg = config or MultVAEConfig()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MultVAE(train.shape[1], cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best_state, best_ndcg, best_epoch, updates = None, -math.inf, -1, 0
    n = train.shape[0]
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen)
        total, beta = 0.0, 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + epoch)
            for start in range(0, n, cfg.batch_size):
                x = train[order[start : start + cfg.batch_size]].to(device)
                beta = (
                    min(cfg.anneal_cap, updates / cfg.total_anneal_steps)
                    if cfg.total_anneal_steps
                    else cfg.anneal_cap
                )
                loss = model.loss(x, beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                updates += 1
                total += float(loss.detach()) * x.shape[0]
        ndcg = evaluate_ranking(model, val_fold_in, val_heldout)["ndcg100"]
        if ndcg > best_ndcg or best_state is None:
            best_ndcg, best_epoch = ndcg, epoch
            best_state = copy.deepcopy(model.state_dict())
        yield EpochReport(epoch, total / n, beta, ndcg, best_epoch)
    assert best_state is not None
    model.load_state_dict(best_state)
    model.zero_grad(set_to_none=True)  # the last update's gradients are not the model's
    return model.cpu().eval()


@register
class MultVAEKind(RecommenderKind):
    """Mult-VAE in the registry: trained by :func:`fit_multvae`, scored by :class:`MultVAERecommender`."""

    name = "multvae"
    title = "Mult-VAE"
    config_type = MultVAEConfig

    @classmethod
    def build(cls, n_items: int, config: MultVAEConfig) -> nn.Module:
        return MultVAE(n_items, config)

    @classmethod
    def fit(
        cls,
        train: Tensor | InteractionRows,
        val_fold_in: Tensor | InteractionRows,
        val_heldout: Tensor | InteractionRows,
        *,
        config: MultVAEConfig,
        seed: int,
        device: torch.device | str,
    ) -> Generator[EpochReport, None, nn.Module]:
        return fit_multvae(train, val_fold_in, val_heldout, config=config, seed=seed, device=device)

    @classmethod
    def recommender(cls, module: nn.Module, device: torch.device | str) -> Recommender:
        assert isinstance(module, MultVAE)
        return MultVAERecommender(module, device)
