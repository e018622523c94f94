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
from torch import Tensor

from lcer_core.recommender.multvae import MultVAE, MultVAEConfig

__all__ = ["EpochReport", "fit_multvae", "ndcg_at", "recall_at", "evaluate_ranking"]


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
    model: MultVAE, fold_in: Tensor, heldout: Tensor, batch: int = 2000
) -> dict[str, float]:
    """NDCG@100, Recall@20 and Recall@50 averaged over users with held-out items."""
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
    train: Tensor,
    val_fold_in: Tensor,
    val_heldout: Tensor,
    *,
    config: MultVAEConfig | None = None,
    seed: int = 98765,
    device: torch.device | str = "cpu",
) -> Generator[EpochReport, None, MultVAE]:
    """Train Mult-VAE on ``train [U, M]``; yield one :class:`EpochReport` per epoch.

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
    return model.cpu().eval()
