"""Mult-VAE (Liang et al., WWW 2018): the recommender of the paper (section 3.2.1).

The network (:class:`MultVAE`) is kept apart from the adapter that exposes it behind the
:class:`~lcer_core.recommender.base.Recommender` seam (:class:`MultVAERecommender`),
as Cornac separates ``vaecf.py`` from ``recom_vaecf.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcer_core.errors import InvalidParameterError
from lcer_core.recommender.base import Recommender, SetScorer

__all__ = ["MultVAE", "MultVAEConfig", "MultVAERecommender"]


@dataclass(frozen=True)
class MultVAEConfig:
    """Hyperparameters of Mult-VAE and its training, as in the reference protocol."""

    hidden: int = 600
    latent: int = 200
    dropout: float = 0.5
    epochs: int = 200
    batch_size: int = 500
    lr: float = 1e-3
    total_anneal_steps: int = 200_000
    anneal_cap: float = 0.2

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise InvalidParameterError(f"epochs must be >= 1, got {self.epochs}", param="epochs")

    def dump(self) -> dict[str, Any]:
        return asdict(self)


class MultVAE(nn.Module):
    """Encoder I-600-200 (tanh), decoder 200-600-I, multinomial likelihood."""

    def __init__(self, n_items: int, config: MultVAEConfig | None = None) -> None:
        super().__init__()
        cfg = config or MultVAEConfig()
        self.n_items = n_items
        self.latent = cfg.latent
        self.dropout = cfg.dropout
        self.enc1 = nn.Linear(n_items, cfg.hidden)
        self.enc2 = nn.Linear(cfg.hidden, 2 * cfg.latent)
        self.dec1 = nn.Linear(cfg.latent, cfg.hidden)
        self.dec2 = nn.Linear(cfg.hidden, n_items)
        for layer in (self.enc1, self.enc2, self.dec1, self.dec2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.trunc_normal_(layer.bias, std=0.001, a=-0.002, b=0.002)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.normalize(x, dim=1)
        h = F.dropout(h, self.dropout, training=self.training)
        h = self.enc2(torch.tanh(self.enc1(h)))
        return h[:, : self.latent], h[:, self.latent :]

    def decode(self, z: Tensor) -> Tensor:
        return self.dec2(torch.tanh(self.dec1(z)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, M]``; the latent is sampled while training and its mean otherwise."""
        mu, logvar = self.encode(x)
        if self.training:
            mu = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(mu)

    def loss(self, x: Tensor, beta: float) -> Tensor:
        """Negative ELBO with KL weight ``beta`` (annealed by the trainer)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        logits = self.decode(z)
        neg_ll = -(F.log_softmax(logits, 1) * x).sum(1).mean()
        kl = (0.5 * (-logvar + logvar.exp() + mu.pow(2) - 1)).sum(1).mean()
        return neg_ll + beta * kl


class MultVAERecommender(Recommender):
    """Deterministic scoring with a trained :class:`MultVAE`: the logits at the latent mean.

    The scores are the decoder's logits, as in the reference implementation: LCER's margin
    α is on that scale. :meth:`set_scorer` is the explainers' fast path: it gathers the first
    encoder layer's rows of each pair's interacted items and the last decoder layer's columns
    of the target items once, so one call costs O(L·H) instead of O(M·H).
    """

    def __init__(self, model: MultVAE, device: torch.device | str | None = None) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.n_items = model.n_items

    @property
    def device(self) -> torch.device:
        return self.model.enc1.weight.device

    def scores(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.device))

    @property
    def _table(self) -> Tensor:
        """The first encoder layer as an [M, H] lookup table (cached: the model is frozen)."""
        w = self.model.enc1.weight
        cached = getattr(self, "_table_cache", None)
        if cached is None or cached.device != w.device:
            cached = w.t().contiguous()
            self._table_cache = cached
        return cached

    def scores_of_sets(
        self, items: Tensor, weights: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        m = self.model
        norm = (
            weights.pow(2).sum(1, keepdim=True).clamp_min(1e-12).sqrt()
        )  # as tf.nn.l2_normalize: finite gradient at 0
        pre = F.embedding_bag(items, self._table, mode="sum", per_sample_weights=weights / norm)
        z = m.enc2(torch.tanh(pre + m.enc1.bias))[:, : m.latent]
        out = torch.tanh(m.dec1(z))
        if targets is None:
            return m.dec2(out)
        return torch.einsum("ph,pth->pt", out, m.dec2.weight[targets]) + m.dec2.bias[targets]

    def set_scorer(
        self, items: Tensor, mask: Tensor, targets: Tensor
    ) -> Callable[[Tensor], Tensor]:
        """Fast path of the explainers' inner loop: the first layer as small matrix products.

        Pairs that share a history (the K pairs of one user) share the first layer's rows of
        their items: per history, ``[K, L] @ [L, H]``, batched over histories of similar
        length (a few length buckets bound the padding). The last layer is evaluated at the
        targets only. The rows are gathered once per batch, not per call.
        """
        m = self.model
        dev = items.device
        n_pairs, width = items.shape
        groups = _HistoryGroups(items, mask, self._table)
        pair_of = torch.repeat_interleave(torch.arange(n_pairs, device=dev), mask.sum(1))
        w_mu, b_mu = m.enc2.weight[: m.latent], m.enc2.bias[: m.latent]
        cols = m.dec2.weight[targets].contiguous()  # [P, T, H]
        bias = m.dec2.bias[targets]

        def score(flat_weights: Tensor) -> Tensor:
            sq = torch.zeros(n_pairs, dtype=flat_weights.dtype, device=dev)
            norm = sq.index_add(0, pair_of, flat_weights * flat_weights).clamp_min(1e-12).sqrt()
            w = torch.zeros(n_pairs, width, dtype=flat_weights.dtype, device=dev).masked_scatter(
                mask, flat_weights
            )
            h = torch.tanh(groups.first_layer(w / norm[:, None]) + m.enc1.bias)
            out = torch.tanh(m.dec1(F.linear(h, w_mu, b_mu)))
            return torch.bmm(cols, out.unsqueeze(2)).squeeze(2) + bias

        return score

    def set_scorer_vjp(self, items: Tensor, mask: Tensor, targets: Tensor) -> SetScorer:
        """The fused scorer of LCER's inner loop: the same computation as :meth:`set_scorer`,
        with a hand-written backward pass (no autograd graph, no weight gradients)."""
        return _MultVAESetScorer(self, items, mask, targets)


def _tanh_(x: Tensor) -> Tensor:
    """tanh in place as 2·sigmoid(2x) − 1: a third of ``torch.tanh``'s time on CPU, error ~1e-7."""
    return torch.sigmoid_(x.mul_(2)).mul_(2).sub_(1)


class _MultVAESetScorer(SetScorer):
    """Forward and input-gradient of Mult-VAE's score of one target per pair.

    The explainers' hot loop. What it does beyond the plain computation, all exact up to
    floating-point rounding: :meth:`score_removed` computes the first layer from the removed
    entries only (the sum over the whole history minus the removed rows, an embedding bag,
    since LCER's forward inputs are 0/1); :meth:`vjp` runs the dense backward only for the
    pairs whose upstream gradient is non-zero (LCER: the pairs whose hinge is active, about
    a quarter of them), and the weights are kept transposed for row-major products.
    """

    def __init__(
        self, rec: MultVAERecommender, items: Tensor, mask: Tensor, targets: Tensor
    ) -> None:
        m = rec.model
        dev = items.device
        self.mask = mask
        self.n_pairs, self.width = items.shape
        self.table = rec._table
        self.groups = _HistoryGroups(items, mask, self.table)
        self.counts = mask.sum(1)
        self.pair_of = torch.repeat_interleave(torch.arange(self.n_pairs, device=dev), self.counts)
        self.flat_items = items[mask]
        self.b1 = m.enc1.bias
        self.w_mu, self.b_mu = m.enc2.weight[: m.latent], m.enc2.bias[: m.latent]  # [d, H], [d]
        self.w_mu_t = self.w_mu.t().contiguous()  # [H, d]
        self.w_d1, self.b_d1 = m.dec1.weight, m.dec1.bias  # [H, d], [H]
        self.w_d1_t = self.w_d1.t().contiguous()  # [d, H]
        self.cols = m.dec2.weight[targets].contiguous()  # [P, H]
        self.bias = m.dec2.bias[targets]
        self._total: Tensor | None = None  # first-layer sums over whole histories, lazily

    def _finish(self, pre: Tensor) -> Tensor:
        """Layers 2.. from the first layer's pre-activation ``[P, H]`` (consumed)."""
        self.h1 = _tanh_(pre.add_(self.b1))
        mu = torch.addmm(self.b_mu, self.h1, self.w_mu_t)
        self.h2 = _tanh_(torch.addmm(self.b_d1, mu, self.w_d1_t))
        return (self.h2 * self.cols).sum(1) + self.bias

    def __call__(self, flat_weights: Tensor) -> Tensor:
        w = flat_weights.detach()
        sq = torch.zeros(self.n_pairs, dtype=w.dtype, device=w.device).index_add_(
            0, self.pair_of, w * w
        )
        self.live = sq >= 1e-12  # tf.nn.l2_normalize: max(sum of squares, 1e-12)
        self.norm = sq.clamp_min(1e-12).sqrt()
        self.w = w
        grid = torch.zeros(self.n_pairs, self.width, dtype=w.dtype, device=w.device)
        grid.masked_scatter_(self.mask, w / self.norm[self.pair_of])
        return self._finish(self.groups.first_layer(grid))

    def score_removed(self, removed: Tensor) -> Tensor:
        if self._total is None:
            self._total = self.groups.first_layer(self.mask.to(self.table.dtype))
        n_removed = torch.zeros_like(self.counts).index_add_(0, self.pair_of, removed.long())
        kept = (self.counts - n_removed).to(self.table.dtype)
        self.live = kept > 0
        self.norm = kept.clamp_min(1e-12).sqrt()  # the norm of a 0/1 vector
        self.w = (~removed).to(self.table.dtype)
        offsets = torch.cumsum(n_removed, 0) - n_removed
        gone = F.embedding_bag(
            self.flat_items[removed], self.table, offsets, mode="sum"
        )  # [P, H]: the rows taken out
        pre = (self._total - gone).div_(self.norm[:, None])
        if not bool(self.live.all()):
            pre.masked_fill_(~self.live[:, None], 0.0)  # nothing kept: x_cf = 0 exactly
        return self._finish(pre)

    def vjp(self, upstream: Tensor) -> Tensor:
        on = (upstream != 0).nonzero().squeeze(1)
        if on.numel() == 0:
            return torch.zeros_like(self.w)
        h1, h2 = self.h1[on], self.h2[on]
        g = self.cols[on] * upstream[on, None]
        g = g.mul_(1 - h2 * h2)  # through tanh of the decoder
        g = (g @ self.w_d1) @ self.w_mu  # through dec1 and the mean of enc2
        g = g.mul_(1 - h1 * h1)  # through tanh of the encoder
        full = torch.zeros(self.n_pairs, g.shape[1], dtype=g.dtype, device=g.device)
        full.index_copy_(0, on, g)
        g_norm = self.groups.first_layer_t(full, self.width)[self.mask]  # d/d(w / norm), [N]
        inv = 1.0 / self.norm
        dot = torch.zeros_like(self.norm).index_add_(0, self.pair_of, g_norm * self.w)
        coef = torch.where(self.live, dot * inv * inv * inv, torch.zeros_like(dot))
        return g_norm * inv[self.pair_of] - self.w * coef[self.pair_of]


class _HistoryGroups:
    """Runs of consecutive pairs with the same history (the K pairs of one user), cut into a few
    contiguous buckets, for batched first layers.

    Within a bucket whose runs all have K pairs, the weights of its pairs are a zero-copy
    ``[G, K, L]`` view; otherwise they are scattered into such a grid. Sorting pairs by history
    length beforehand (LCER does) makes the buckets' padding small.
    """

    def __init__(self, items: Tensor, mask: Tensor, table: Tensor, buckets: int = 16) -> None:
        dev = items.device
        n_pairs = items.shape[0]
        keyed = torch.where(mask, items, torch.full_like(items, -1))
        new_run = torch.ones(n_pairs, dtype=torch.bool, device=dev)
        if n_pairs > 1:
            new_run[1:] = (keyed[1:] != keyed[:-1]).any(1)
        run_of = torch.cumsum(new_run.long(), 0) - 1  # [P]
        starts = torch.nonzero(new_run).squeeze(1).tolist()
        ends = starts[1:] + [n_pairs]
        lengths = mask.sum(1)
        # Cut the runs into contiguous buckets of about equal numbers of pairs.
        bounds = [0]
        per_bucket = max(1, -(-n_pairs // max(1, buckets)))
        for start in starts[1:]:
            if start - bounds[-1] >= per_bucket:
                bounds.append(start)
        bounds.append(n_pairs)
        self.parts: list[tuple[int, int, Tensor | None, Tensor | None, int, int, Tensor]] = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            run_ids = list(range(int(run_of[lo]), int(run_of[hi - 1]) + 1))
            sizes = [ends[r] - starts[r] for r in run_ids]
            kmax = max(sizes)
            width = max(int(lengths[lo:hi].max()), 1)
            first = torch.tensor([starts[r] for r in run_ids], device=dev)
            ids = keyed[first, :width]
            rows = table[ids.clamp_min(0)] * (ids >= 0).unsqueeze(2).to(table.dtype)  # [G, L, H]
            if all(size == kmax for size in sizes):
                group = slot = None  # regular: a reshape
            else:
                group = run_of[lo:hi] - run_of[lo]
                slot = (
                    torch.arange(lo, hi, device=dev)
                    - torch.tensor(starts, device=dev)[run_of[lo:hi]]
                )
            self.parts.append((lo, hi, group, slot, kmax, width, rows))

    def first_layer(self, weights: Tensor) -> Tensor:
        """``[P, L]`` normalised weights -> ``[P, H]`` pre-activations of the first layer."""
        outs = []
        for lo, hi, group, slot, kmax, width, rows in self.parts:
            w = weights[lo:hi, :width]
            if group is None:
                outs.append(
                    torch.bmm(w.reshape(rows.shape[0], kmax, width), rows).reshape(hi - lo, -1)
                )
            else:
                grid = torch.zeros(rows.shape[0], kmax, width, dtype=w.dtype, device=w.device)
                grid = grid.index_put((group, slot), w)
                outs.append(torch.bmm(grid, rows)[group, slot])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def first_layer_t(self, grad: Tensor, width: int) -> Tensor:
        """The transpose of :meth:`first_layer`: ``[P, H]`` -> ``[P, width]``."""
        out = torch.zeros(grad.shape[0], width, dtype=grad.dtype, device=grad.device)
        for lo, hi, group, slot, kmax, w, rows in self.parts:
            g = grad[lo:hi]
            if group is None:
                out[lo:hi, :w] = torch.bmm(
                    g.reshape(rows.shape[0], kmax, -1), rows.transpose(1, 2)
                ).reshape(hi - lo, w)
            else:
                grid = torch.zeros(
                    rows.shape[0], kmax, rows.shape[2], dtype=g.dtype, device=g.device
                )
                grid[group, slot] = g
                out[lo:hi, :w] = torch.bmm(grid, rows.transpose(1, 2))[group, slot]
        return out
