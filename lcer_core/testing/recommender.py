"""The recommender contract as plain functions: what every :class:`Recommender` promises.

Scores are deterministic ``[B, M]`` floats on the recommender's device, row by row independent
of the batch; the set-based fast paths (``scores_of_sets``, ``set_scorer``,
``set_scorer_vjp``) agree with :meth:`Recommender.scores` on the dense input, gradients
included; and scoring leaves no autograd state behind.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcer_core.pairs import Histories, build_pairs, histories_from_lists
from lcer_core.recommender.base import Recommender, dense_from_sets, topk_excluding
from lcer_core.testing.explainer import ContractError

__all__ = [
    "check_recommender",
    "check_scores",
    "check_sets_agree",
    "check_set_scorers",
    "check_no_autograd_state",
    "check_recommendations",
    "edge_histories",
]

ATOL, RTOL = 1e-4, 1e-4


def _fail(recommender: Recommender, message: str) -> None:
    raise ContractError(f"{type(recommender).__name__}: {message}")


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=ATOL, rtol=RTOL)


def _inputs(recommender: Recommender, histories: Histories, seed: int) -> tuple[Tensor, ...]:
    """Items, mask, fractional weights (0 at padding) and one target per row, on the device."""
    dev = recommender.device
    items, mask = histories.items.to(dev), histories.mask.to(dev)
    gen = torch.Generator().manual_seed(seed)
    weights = (torch.rand(mask.shape, generator=gen).to(dev) * 0.9 + 0.1) * mask
    targets = torch.randint(recommender.n_items, (len(histories),), generator=gen).to(dev)
    return items, mask, weights, targets


@torch.no_grad()
def check_scores(recommender: Recommender, histories: Histories) -> None:
    """``[B, M]`` finite floats on its device; the same twice; each row as if scored alone."""
    if not (isinstance(recommender.n_items, int) and recommender.n_items > 0):
        _fail(recommender, f"n_items must be a positive int, got {recommender.n_items!r}")
    if not isinstance(recommender.device, torch.device):
        _fail(recommender, "device must be a torch.device")
    items, mask, _, _ = _inputs(recommender, histories, 0)
    x = dense_from_sets(items, mask.float(), recommender.n_items)
    before = x.clone()
    s = recommender.scores(x)
    if tuple(s.shape) != (len(histories), recommender.n_items):
        _fail(recommender, f"scores has shape {tuple(s.shape)}, not [B, n_items]")
    if not s.is_floating_point() or s.device != recommender.device:
        _fail(recommender, f"scores are {s.dtype} on {s.device}")
    if not torch.isfinite(s).all():
        _fail(recommender, "scores are not finite")
    if not torch.equal(x, before):
        _fail(recommender, "scores() changed its input")
    if not torch.equal(recommender.scores(x), s):
        _fail(recommender, "scores of the same input differ between two calls")
    rows = torch.cat([recommender.scores(x[b : b + 1]) for b in range(len(histories))])
    if not _close(rows, s):
        _fail(recommender, "a row's scores depend on the other rows of its batch")
    empty = recommender.scores(x[:0])
    if tuple(empty.shape) != (0, recommender.n_items):
        _fail(recommender, f"an empty batch gives scores of shape {tuple(empty.shape)}")


@torch.no_grad()
def check_sets_agree(recommender: Recommender, histories: Histories) -> None:
    """``scores_of_sets`` (all items, and gathered at targets) equals ``scores`` of the dense input."""
    items, mask, weights, targets = _inputs(recommender, histories, 1)
    dense = recommender.scores(dense_from_sets(items, weights, recommender.n_items))
    full = recommender.scores_of_sets(items, weights)
    if not _close(full, dense):
        _fail(recommender, "scores_of_sets differs from scores of the same dense input")
    two = torch.stack([targets, (targets + 1) % recommender.n_items], 1)
    got = recommender.scores_of_sets(items, weights, two)
    if not _close(got, dense.gather(1, two)):
        _fail(recommender, "scores_of_sets(targets=...) differs from the gathered scores")
    flat = weights[mask]
    scorer = recommender.set_scorer(items, mask, two)
    if not _close(scorer(flat), dense.gather(1, two)):
        _fail(recommender, "set_scorer differs from the gathered scores")


def check_set_scorers(recommender: Recommender, histories: Histories) -> None:
    """``set_scorer_vjp``: scores, ``score_removed`` and ``vjp`` agree with autograd on ``scores``."""
    items, mask, weights, targets = _inputs(recommender, histories, 2)
    flat = weights[mask]
    scorer = recommender.set_scorer_vjp(items, mask, targets)
    got = scorer(flat)
    up = torch.linspace(0.5, 1.5, len(histories), device=recommender.device)
    grad = scorer.vjp(up)
    with torch.enable_grad():
        w = flat.detach().clone().requires_grad_(True)
        dense_w = torch.zeros(mask.shape, device=w.device).masked_scatter(mask, w)
        ref = recommender.scores(dense_from_sets(items, dense_w, recommender.n_items))
        ref = ref.gather(1, targets[:, None])[:, 0]
        if not ref.requires_grad:
            _fail(recommender, "scores are not differentiable in the input")
        (ref_grad,) = torch.autograd.grad(ref, w, up, allow_unused=True)
    if not _close(got, ref.detach()):
        _fail(recommender, "set_scorer_vjp scores differ from scores of the dense input")
    ref_grad = torch.zeros_like(flat) if ref_grad is None else ref_grad
    if not _close(grad, ref_grad):
        _fail(recommender, "set_scorer_vjp's vjp differs from autograd through scores")
    removed = torch.rand(flat.shape, generator=torch.Generator().manual_seed(2)) < 0.4
    removed = removed.to(flat.device)
    if not _close(scorer.score_removed(removed), scorer(1.0 - removed.float())):
        _fail(recommender, "score_removed differs from scoring the weights 1 - removed")


def check_no_autograd_state(recommender: Recommender, histories: Histories) -> None:
    """Scoring plain inputs gives plain tensors and leaves the grad mode as it was."""
    items, mask, weights, targets = _inputs(recommender, histories, 3)
    x = dense_from_sets(items, weights, recommender.n_items)
    for enabled in (True, False):
        with torch.set_grad_enabled(enabled):
            outs = [
                recommender.scores(x),
                recommender.scores_of_sets(items, weights),
                recommender.scores_of_sets(items, weights, targets[:, None]),
            ]
            if torch.is_grad_enabled() != enabled:
                _fail(recommender, "scoring changed torch's grad mode")
        if any(o.requires_grad for o in outs):
            _fail(recommender, "scores of an input without grad require grad (trainable state?)")
    scorer = recommender.set_scorer_vjp(items, mask, targets)
    out = scorer(weights[mask])
    grad = scorer.vjp(torch.ones_like(out))
    if out.requires_grad or grad.requires_grad or grad.grad_fn is not None:
        _fail(recommender, "set_scorer_vjp returns tensors that hold an autograd graph")
    for name in ("model", "module"):
        module = getattr(recommender, name, None)
        if isinstance(module, torch.nn.Module):
            if module.training:
                _fail(recommender, f"its {name} is in training mode (dropout is not deterministic)")
            if any(p.grad is not None for p in module.parameters()):
                _fail(recommender, f"its {name}'s parameters hold gradients")


def check_recommender(recommender: Recommender, histories: Histories) -> None:
    """Run the whole recommender contract on ``histories`` (a few users are enough)."""
    if len(histories) < 2 or not histories.mask.any():
        raise ValueError("check_recommender needs at least two histories, not all empty")
    check_scores(recommender, histories)
    check_sets_agree(recommender, histories)
    check_set_scorers(recommender, histories)
    check_no_autograd_state(recommender, histories)


def edge_histories(n_items: int, seed: int = 0) -> Histories:
    """Histories that meet the padding: every length from 1 to ``n_items // 2`` in one batch,
    holding item 0, the last item, both, or neither."""
    gen = torch.Generator().manual_seed(seed)
    lists = []
    for length in range(1, max(n_items // 2, 1) + 1):
        for forced in ([0], [n_items - 1], [0, n_items - 1], []):
            rest = [int(i) for i in torch.randperm(n_items, generator=gen) if int(i) not in forced]
            lists.append(sorted(set(forced[:length] + rest[: length - len(forced[:length])])))
    return histories_from_lists(list(range(len(lists))), lists)


@torch.no_grad()
def check_recommendations(
    recommender: Recommender, histories: Histories, k: int = 3, chunk: int | None = None
) -> None:
    """:func:`build_pairs` never recommends an item of the user's history, and its top-``k`` (and
    the (k+1)-th score) equals a dense reference ranking with the history excluded."""
    pairs = build_pairs(recommender, histories, k, chunk=chunk)
    n, m = len(histories), recommender.n_items
    owned = torch.zeros(n, m, dtype=torch.bool)
    for row, (items, mask) in enumerate(zip(histories.items, histories.mask, strict=True)):
        owned[row, items[mask]] = True  # the slow, obviously right reference
    targets = pairs.targets.cpu().view(n, k)
    if owned.gather(1, targets).any():
        bad = int(owned.gather(1, targets).any(1).nonzero()[0, 0])
        _fail(
            recommender, f"recommends an item of user {bad}'s own history: {targets[bad].tolist()}"
        )
    dense = recommender.scores(owned.float().to(recommender.device)).cpu()
    _, ref_vals = topk_excluding(dense, owned, k + 1)
    got_vals = dense.gather(1, targets).sort(1, descending=True).values
    if not _close(got_vals, ref_vals[:, :k]):
        _fail(recommender, "the recommended items are not the dense reference's top-k")
    if not _close(pairs.thresholds.cpu().view(n, k)[:, 0], ref_vals[:, k]):
        _fail(recommender, "the (k+1)-th score differs from the dense reference's")
