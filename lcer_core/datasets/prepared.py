"""A prepared dataset on disk, and how the rest of the package reads it.

Layout under ``$LCER_HOME/data/NAME/`` (written by :func:`lcer_core.datasets.prepare`): a
file ``current`` names the folder ``prepared-ID/`` of the current preparation, which holds
the files below and is never changed once ``current`` names it. A new preparation goes into
a new folder and replaces ``current`` atomically, so a reader, which resolves ``current``
once, never sees parts of two preparations.

- ``train.parquet``, ``val_tr.parquet``, ``val_te.parquet``, ``test_tr.parquet``,
  ``test_te.parquet``: columns ``uid`` (int64), ``sid`` (int64). ``*_tr`` is the fold-in
  part a held-out user's recommender input is made of, ``*_te`` the held-out 20 %.
- ``users.parquet``: ``uid``, ``raw_id`` (str, the id in the raw file), ``split``
  (``train``/``val``/``test``).
- ``items.parquet``: ``sid``, ``raw_id`` (str), ``title`` (str or null), ``genres``
  (str or null: ``|``-joined genres, or the category).
- ``meta.json``: ``{"dataset", "stats": {...Table 1 and split sizes...}, "seed",
  "fingerprint", ...}``; written last, so its presence means the folder is complete.

Split seeds: ``$LCER_HOME/data/NAME/split-S/`` holds, in the same layout (its own ``current``
and ``prepared-ID/``), the preparation whose user shuffle and fold-in split use seed ``S``
instead of the dataset's own: another assignment of users to train, validation and test, beside
the default one, which stays where it was (``split_seed`` None everywhere means the default).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from lcer_core.errors import DamagedDataError, MissingDataError, UnknownUserError
from lcer_core.paths import dataset_dir

if TYPE_CHECKING:  # torch is imported lazily: `lcer stats` should not pay for it
    import torch

    from lcer_core.pairs import Histories
    from lcer_core.recommender import training as torch_training

__all__ = [
    "PARTS",
    "CURRENT",
    "SPLIT_PREFIX",
    "PreparedDataset",
    "load_prepared",
    "is_prepared",
    "prepared_dir",
    "split_dir",
]

PARTS = ("train", "val_tr", "val_te", "test_tr", "test_te")
CURRENT = "current"  # the pointer file: the name of the current preparation's folder
VERSION_PREFIX = "prepared-"
SPLIT_PREFIX = "split-"  # data/NAME/split-S/: the preparation with split seed S


def split_dir(name: str, split_seed: int | None = None) -> Path:
    """The folder of ``name``'s preparations with ``split_seed`` (None: the default split)."""
    base = dataset_dir(name)
    return base if split_seed is None else base / f"{SPLIT_PREFIX}{int(split_seed)}"


def prepared_dir(name: str, split_seed: int | None = None) -> Path | None:
    """The folder of the current preparation of ``name`` (resolved once), or None."""
    base = split_dir(name, split_seed)
    try:
        target = (base / CURRENT).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not target.startswith(VERSION_PREFIX) or os.sep in target or target in (".", ".."):
        return None
    return base / target


def is_prepared(name: str, split_seed: int | None = None) -> bool:
    """True when ``name`` has a complete preparation (its ``meta.json`` is written last)."""
    folder = prepared_dir(name, split_seed)
    return folder is not None and (folder / "meta.json").is_file()


@dataclass
class PreparedDataset:
    """The filtered, split interactions of one dataset with its id maps and item metadata."""

    name: str
    folder: Path
    meta: dict[str, Any]
    users: pl.DataFrame
    items: pl.DataFrame
    _parts: dict[str, pl.DataFrame] = field(repr=False)
    #: The split seed of a preparation beside the default one (None: the default split).
    split_seed: int | None = None

    @property
    def n_items(self) -> int:
        return int(self.items.height)

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.meta["stats"])

    @property
    def fingerprint(self) -> str:
        """Content hash of the prepared data: part of every model and run key."""
        return str(self.meta["fingerprint"])

    def part(self, name: str) -> pl.DataFrame:
        return self._parts[name]

    def users_of(self, split: str) -> list[int]:
        """Internal ids of the users of ``split`` (``train``, ``val`` or ``test``), ascending."""
        return self.users.filter(pl.col("split") == split)["uid"].sort().to_list()

    def matrix(self, part: str, users: list[int] | None = None) -> tuple[list[int], torch.Tensor]:
        """Dense binary interaction matrix ``[U, M]`` of ``part`` for ``users`` (default: all in it)."""
        import torch

        df = self.part(part)
        if users is None:
            users = sorted(set(df["uid"].to_list()) | set(self._split_users(part)))
        row = {u: r for r, u in enumerate(users)}
        x = torch.zeros(len(users), self.n_items)
        sub = df.filter(pl.col("uid").is_in(users))
        if sub.height:
            rows = torch.as_tensor([row[u] for u in sub["uid"].to_list()])
            cols = torch.as_tensor(sub["sid"].to_list())
            x[rows, cols] = 1.0
        return users, x

    def rows(self, part: str, users: list[int]) -> torch_training.InteractionRows:
        """The interactions of ``part`` for ``users`` (row ``r`` is ``users[r]``), kept sparse:
        what training and evaluation read, one dense batch at a time."""
        import torch

        from lcer_core.recommender.training import InteractionRows

        index = pl.DataFrame(
            {"uid": users, "row": range(len(users))}, schema={"uid": pl.Int64, "row": pl.Int64}
        )
        sub = self.part(part).join(index, on="uid", how="inner")
        return InteractionRows.from_pairs(
            torch.tensor(sub["row"].to_numpy()),
            torch.tensor(sub["sid"].to_numpy()),
            len(users),
            self.n_items,
        )

    def _split_users(self, part: str) -> list[int]:
        split = {
            "train": "train",
            "val_tr": "val",
            "val_te": "val",
            "test_tr": "test",
            "test_te": "test",
        }[part]
        return self.users_of(split)

    @cached_property
    def _inputs(self) -> dict[int, list[int]]:
        # The recommender's input per user: all interactions of a training user, the
        # fold-in part of a held-out user.
        frames = [self.part("train"), self.part("val_tr"), self.part("test_tr")]
        grouped = pl.concat(frames).group_by("uid").agg(pl.col("sid").sort())
        return dict(zip(grouped["uid"].to_list(), grouped["sid"].to_list(), strict=True))

    def history(self, uid: int) -> list[int]:
        """Item ids the recommender sees for user ``uid`` (ascending)."""
        return list(self._inputs.get(uid, []))

    def histories(self, users: list[int]) -> Histories:
        """Padded recommender inputs of ``users`` (see :meth:`history`)."""
        from lcer_core.pairs import histories_from_lists

        return histories_from_lists(users, [self.history(u) for u in users])

    def uid_of(self, raw_id: str | int) -> int:
        """Internal id of a user given the id of the raw file."""
        hit = self.users.filter(pl.col("raw_id") == str(raw_id))
        if hit.height == 0:
            raise UnknownUserError(
                f"user {raw_id!r} is not in dataset {self.name!r} (after filtering)"
            )
        return int(hit["uid"][0])

    def sid_of(self, raw_id: str | int) -> int:
        hit = self.items.filter(pl.col("raw_id") == str(raw_id))
        if hit.height == 0:
            raise UnknownUserError(
                f"item {raw_id!r} is not in dataset {self.name!r} (after filtering)"
            )
        return int(hit["sid"][0])

    def titles(self, sids: list[int]) -> list[str]:
        """Human-readable names (title, else the raw id) for item ids."""
        lookup = self._title_map
        return [lookup.get(s, str(s)) for s in sids]

    @cached_property
    def _title_map(self) -> dict[int, str]:
        df = self.items.with_columns(pl.coalesce(pl.col("title"), pl.col("raw_id")).alias("name"))
        return dict(zip(df["sid"].to_list(), df["name"].to_list(), strict=True))


def _command(name: str, split_seed: int | None) -> str:
    """``lcer prepare NAME`` (with ``--split-seed S`` for a split seed)."""
    return f"lcer prepare {name}" + ("" if split_seed is None else f" --split-seed {split_seed}")


def _repair_hint(name: str, split_seed: int | None = None) -> str:
    return f"run `{_command(name, split_seed)} --force` to prepare it again"


def _read_folder(name: str, folder: Path, split_seed: int | None = None) -> PreparedDataset:
    meta = json.loads((folder / "meta.json").read_text())
    if not isinstance(meta, dict) or "stats" not in meta or "fingerprint" not in meta:
        raise ValueError("meta.json lacks its stats or fingerprint")
    parts = {p: pl.read_parquet(folder / f"{p}.parquet") for p in PARTS}
    return PreparedDataset(
        name=name,
        folder=folder,
        meta=meta,
        users=pl.read_parquet(folder / "users.parquet"),
        items=pl.read_parquet(folder / "items.parquet"),
        _parts=parts,
        split_seed=split_seed,
    )


def load_prepared(name: str, split_seed: int | None = None) -> PreparedDataset:
    """Read a prepared dataset (with ``split_seed``: that split's); :class:`MissingDataError`
    if ``lcer prepare`` has not run, :class:`DamagedDataError` (naming the command that
    repairs it) if a file is damaged."""
    for _ in range(5):  # a concurrent preparation may switch (and remove) the folder we read
        folder = prepared_dir(name, split_seed)
        if folder is None or not (folder / "meta.json").is_file():
            raise MissingDataError(
                f"dataset {name!r} is not prepared yet: run `{_command(name, split_seed)}` first"
            )
        try:
            return _read_folder(name, folder, split_seed)
        except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
            if prepared_dir(name, split_seed) != folder:
                continue  # switched while we read: read the new one, whole
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise DamagedDataError(
                f"the prepared data of {name!r} in {folder} is damaged ({reason}): "
                f"{_repair_hint(name, split_seed)}"
            ) from None
    raise DamagedDataError(f"the prepared data of {name!r} keeps changing: try again")
