"""(user, recommended item) pairs as tensors: what every explainer and every metric consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lcer_core.checks import check_k, check_users
from lcer_core.devices import with_answer_threads
from lcer_core.errors import InvalidParameterError
from lcer_core.recommender.base import Recommender, history_mask, topk_excluding
from lcer_core.recommender.training import DENSE_BATCH_CELLS

if TYPE_CHECKING:
    from lcer_core.datasets import PreparedDataset

__all__ = [
    "PAIRS_VERSION",
    "Histories",
    "PairBatch",
    "build_pairs",
    "histories_from_lists",
    "make_pairs",
    "test_users",
]


#: How the pairs of a model and users are computed; part of every run key, so runs stored with
#: other pairs are never mistaken for (or replaced by) today's. 2: a user's history is
#: excluded from their top-K by a sentinel, never overwritten by padding (version 1
#: recommended item 0 to some users who had it).
PAIRS_VERSION = 2


@dataclass(frozen=True)
class Histories:
    """Users' interacted items as a padded matrix: ``items[u, l]`` valid where ``mask[u, l]``."""

    users: Tensor  # [U] long: internal user ids
    items: Tensor  # [U, L] long, 0 at padding
    mask: Tensor  # [U, L] bool

    def __len__(self) -> int:
        return int(self.users.shape[0])


def histories_from_lists(users: list[int], item_lists: list[list[int]]) -> Histories:
    """Pad per-user item lists (each sorted ascending) into a :class:`Histories`."""
    width = max((len(x) for x in item_lists), default=0)
    items = torch.zeros(len(users), max(width, 1), dtype=torch.long)
    mask = torch.zeros(len(users), max(width, 1), dtype=torch.bool)
    for row, lst in enumerate(item_lists):
        if lst:
            items[row, : len(lst)] = torch.as_tensor(sorted(lst), dtype=torch.long)
            mask[row, : len(lst)] = True
    return Histories(torch.as_tensor(users, dtype=torch.long), items, mask)


@dataclass(frozen=True)
class PairBatch:
    """A batch of pairs to explain, each restricted to its user's interacted items.

    ``thresholds`` is the factual score of the (K+1)-th item, g_{K+1}(x_f), the bar a
    counterfactual score must fall under (paper, eq. 9).
    """

    users: Tensor  # [P] long
    targets: Tensor  # [P] long: the recommended item i
    ranks: Tensor  # [P] long: 1-based position of i in the top-K
    items: Tensor  # [P, L] long
    mask: Tensor  # [P, L] bool
    thresholds: Tensor  # [P] float
    replacements: Tensor  # [P] long: the (K+1)-th item
    k: int

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(1)

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(
            **{
                f.name: (getattr(self, f.name).to(device) if f.name != "k" else self.k)
                for f in fields(self)
            }
        )

    def select(self, index: Tensor | slice) -> PairBatch:
        """The sub-batch at ``index``, trimmed to its own widest history."""
        parts = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "k"}
        width = max(int(parts["mask"].sum(1).max()) if len(parts["mask"]) else 1, 1)
        parts["items"] = parts["items"][:, :width]
        parts["mask"] = parts["mask"][:, :width]
        return PairBatch(**parts, k=self.k)

    def dense_inputs(self, n_items: int, keep: Tensor | None = None) -> Tensor:
        """Dense interaction vectors ``[P, M]``; with ``keep: [P, L]`` only the kept items."""
        w = self.mask.float() if keep is None else (self.mask & keep).float()
        x = torch.zeros(len(self), n_items, device=w.device)
        return x.scatter_add(1, self.items, w)


@with_answer_threads
@torch.no_grad()
def build_pairs(
    recommender: Recommender, histories: Histories, k: int, *, chunk: int | None = None
) -> PairBatch:
    """Recommend top-``k`` for each user (excluding interacted items) and make one pair per item.

    Users are scored ``chunk`` at a time (default: as many as fit one dense score block).
    """
    check_k(k)
    dev = recommender.device
    items, mask = histories.items.to(dev), histories.mask.to(dev)
    free = recommender.n_items - mask.sum(1)
    if len(histories) and int(free.min()) <= k:
        raise InvalidParameterError(
            f"k={k} must be smaller than the number of items a user has not interacted with "
            f"(smallest here: {int(free.min())})"
        )
    # Users in chunks: one dense [users, items] score matrix per chunk, never all users'.
    if chunk is None:
        chunk = max(1, DENSE_BATCH_CELLS // max(recommender.n_items, 1))
    tops, all_vals = [], []
    for s in range(0, max(len(histories), 1), chunk):
        scores = recommender.scores_of_sets(items[s : s + chunk], mask[s : s + chunk].float())
        _check_finite(scores)
        exclude = history_mask(items[s : s + chunk], mask[s : s + chunk], recommender.n_items)
        top, vals = topk_excluding(scores, exclude, k + 1)
        tops.append(top)
        all_vals.append(vals)
        del scores, exclude
    top, vals = (torch.cat(tops), torch.cat(all_vals)) if len(tops) > 1 else (tops[0], all_vals[0])
    n_users = len(histories)
    rep = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
    return PairBatch(
        users=rep(histories.users.to(dev)),
        targets=top[:, :k].reshape(-1),
        ranks=torch.arange(1, k + 1, device=dev).repeat(n_users),
        items=rep(items),
        mask=rep(mask),
        thresholds=rep(vals[:, k]),
        replacements=rep(top[:, k]),
        k=k,
    )


def test_users(
    data: PreparedDataset, n_users: int | None = None, *, strict: bool = False
) -> list[int]:
    """The first ``n_users`` test users (all by default), in ascending internal id; with
    ``strict``, asking for more users than the dataset's test users is a one-line error."""
    users = data.users_of("test")
    if n_users is not None:
        check_users(n_users)
        if strict and n_users > len(users):
            raise InvalidParameterError(
                f"n_users {n_users} is more than the {len(users)} test users of {data.name!r}",
                param="n_users",
            )
        users = users[:n_users]
    return users


test_users.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def make_pairs(
    recommender: Recommender, data: PreparedDataset, users: list[int], k: int
) -> PairBatch:
    """Top-``k`` pairs of ``users`` of ``data`` with their thresholds g_{K+1}(x_f)."""
    return build_pairs(recommender, data.histories(users), k)


def _check_finite(scores: Tensor) -> None:
    from lcer_core.errors import NonFiniteScoresError

    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).any(1).sum())
        raise NonFiniteScoresError(f"the recommender produced non-finite scores for {bad} user(s)")
