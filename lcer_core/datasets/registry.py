"""The dataset registry: the one place that holds each dataset's source, format and protocol.

Built-in entries are the paper's four datasets; a user registers more with
``lcer prepare NAME --from FILE`` (see :mod:`lcer_core.datasets.custom`), recorded in
``$LCER_HOME/data/NAME/source.json`` and read back here, so every command accepts
``NAME`` afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lcer_core.checks import NAME_RE
from lcer_core.errors import DataFormatError, InvalidParameterError, UnknownDatasetError
from lcer_core.paths import data_dir, dataset_dir

__all__ = [
    "DEFAULT_SEED",
    "CUSTOM_HELDOUT_DEFAULT",
    "Table1",
    "DatasetSpec",
    "CustomSource",
    "BUILTIN",
    "get_spec",
    "known_datasets",
    "builtin_datasets",
    "custom_datasets",
    "read_custom_source",
    "source_json_path",
    "validate_name",
]

DEFAULT_SEED = 98765  # the seed of the Mult-VAE reference notebook
CUSTOM_HELDOUT_DEFAULT = 100  # held-out users (each of val and test) of a custom dataset
SOURCE_JSON = "source.json"
_NAME_RE = NAME_RE  # one definition of a name usable as a folder


@dataclass(frozen=True)
class Table1:
    """Statistics after filtering as printed in Table 1 of the paper (documentation, checks)."""

    users: int
    items: int
    interactions: int
    density_pct: float


@dataclass(frozen=True)
class CustomSource:
    """How a user-registered dataset is read: its copied file, columns and filtering."""

    file: str  # name of the copy under data/NAME/raw/
    original: str  # absolute path it was registered from (informational)
    sha256: str  # content digest of the copy
    user_col: str
    item_col: str
    rating_col: str | None = None
    threshold: float | None = None
    heldout_users: int = CUSTOM_HELDOUT_DEFAULT
    sep: str | None = ","  # None: by each file's type (a tab for .tsv)
    items_file: str | None = None
    items_original: str | None = None
    items_sha256: str | None = None
    item_id_col: str | None = None
    title_col: str | None = None
    genres_col: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CustomSource:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where its archive comes from, how it is parsed, and how it is filtered and split.

    ``files`` are the base names the archive must contain (found under any folder),
    ``optional_files`` those read when present; ``checksums`` map them to the sha256 of
    their extracted content where it is published (a member with one is never read
    unchecked).
    """

    name: str
    title: str
    url: str | None  # official download URL; None for a manual download or a custom dataset
    archive: str  # file name under data/NAME/raw/ and under LCER_MIRROR
    raw_format: str  # "ml-100k", "ml-1m", "epinions", "alishop", "custom"
    files: tuple[str, ...]
    optional_files: tuple[str, ...] = ()
    checksums: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    threshold: float | None = 3.5  # keep ratings strictly above; None keeps all
    min_user_interactions: int = 5
    heldout_users: int = 100  # validation users, and as many test users
    table1: Table1 | None = None
    homepage: str | None = None
    manual: bool = False  # no public URL: download by hand (or from LCER_MIRROR)
    custom: CustomSource | None = None

    @property
    def given_split(self) -> bool:
        """True when the raw data arrives already filtered and split (Alishop)."""
        return self.raw_format == "alishop"

    def raw_dir(self) -> Path:
        return dataset_dir(self.name) / "raw"

    def archive_path(self) -> Path:
        return self.raw_dir() / self.archive


def _frozen(d: dict[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(d))


BUILTIN: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "ml-100k": DatasetSpec(
            name="ml-100k",
            title="MovieLens 100K",
            url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
            archive="ml-100k.zip",
            raw_format="ml-100k",
            files=("u.data", "u.item"),
            optional_files=("u.genre",),  # the genre names of u.item's flags
            checksums=_frozen(
                {
                    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
                    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
                }
            ),
            threshold=3.5,
            heldout_users=100,
            table1=Table1(users=938, items=1447, interactions=55_361, density_pct=4.079),
            homepage="https://grouplens.org/datasets/movielens/100k/",
        ),
        "ml-1m": DatasetSpec(
            name="ml-1m",
            title="MovieLens 1M",
            url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
            archive="ml-1m.zip",
            raw_format="ml-1m",
            files=("ratings.dat", "movies.dat"),
            threshold=3.5,
            heldout_users=500,
            table1=Table1(users=6034, items=3502, interactions=575_235, density_pct=2.722),
            homepage="https://grouplens.org/datasets/movielens/1m/",
        ),
        "alishop": DatasetSpec(
            name="alishop",
            title="Alishop (alishop-7c)",
            url=None,
            archive="alishop-7c.zip",
            raw_format="alishop",
            files=(
                "unique_sid.txt",
                "train.csv",
                "validation_tr.csv",
                "validation_te.csv",
                "test_tr.csv",
                "test_te.csv",
                "item_cate.csv",
            ),
            threshold=None,  # implicit feedback, already filtered and split by its authors
            heldout_users=2000,
            table1=Table1(users=10_668, items=20_591, interactions=767_493, density_pct=0.350),
            homepage="https://jianxinma.github.io/disentangle-recsys.html",
            manual=True,
        ),
        "epinions": DatasetSpec(
            name="epinions",
            title="Epinions",
            url="http://www.trustlet.org/datasets/downloaded_epinions/ratings_data.txt.bz2",
            archive="ratings_data.txt.bz2",
            raw_format="epinions",
            files=("ratings_data.txt",),
            threshold=3.5,
            heldout_users=2000,
            table1=Table1(users=20_634, items=115_798, interactions=460_451, density_pct=0.019),
            homepage="http://www.trustlet.org/epinions.html",
        ),
    }
)


def builtin_datasets() -> list[str]:
    """Names of the paper's datasets, in the paper's order."""
    return list(BUILTIN)


def validate_name(name: str) -> str:
    """A dataset name usable as a folder and an MLflow experiment name, or InvalidParameterError."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidParameterError(
            f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
        )
    return name


def source_json_path(name: str) -> Path:
    return dataset_dir(name) / SOURCE_JSON


def read_custom_source(name: str) -> CustomSource | None:
    """The registration of custom dataset ``name``, or None if there is none."""
    path = source_json_path(name)
    if name in BUILTIN or not _NAME_RE.fullmatch(name) or not path.is_file():
        return None
    try:
        return CustomSource.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise DataFormatError(f"{path} is not a valid dataset registration: {exc}") from exc


def custom_datasets() -> list[str]:
    """Names registered by the user under ``$LCER_HOME/data``, sorted."""
    root = data_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.parent.name
        for p in root.glob(f"*/{SOURCE_JSON}")
        if p.parent.name not in BUILTIN and _NAME_RE.fullmatch(p.parent.name)
    )


def known_datasets() -> list[str]:
    """Every name a command accepts: the built-in datasets, then the user's."""
    return builtin_datasets() + custom_datasets()


def _custom_spec(name: str, src: CustomSource) -> DatasetSpec:
    files = (src.file,) + ((src.items_file,) if src.items_file else ())
    sums = {src.file: src.sha256}
    if src.items_file and src.items_sha256:
        sums[src.items_file] = src.items_sha256
    return DatasetSpec(
        name=name,
        title=f"{name} (custom, from {src.original})",
        url=None,
        archive=src.file,
        raw_format="custom",
        files=files,
        checksums=_frozen(sums),
        threshold=src.threshold,
        heldout_users=src.heldout_users,
        custom=src,
    )


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; :class:`UnknownDatasetError` listing the known names."""
    spec = BUILTIN.get(name)
    if spec is not None:
        return spec
    src = read_custom_source(name)
    if src is not None:
        return _custom_spec(name, src)
    customs = custom_datasets()
    known = ", ".join(builtin_datasets())
    if customs:
        known += "; registered: " + ", ".join(customs)
    raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {known}")
