"""Datasets: registry, download, parsing, the Mult-VAE preprocessing protocol, prepared data.

``prepare("ml-100k")`` downloads (or takes from ``LCER_MIRROR``), filters and splits a
dataset into ``$LCER_HOME/data/ml-100k/``; ``load_prepared("ml-100k")`` reads it back.
"""

from lcer_core.datasets.prepare import PrepareResult, ensure_prepared, prepare, prepare_dataset
from lcer_core.datasets.prepared import PreparedDataset, is_prepared, load_prepared
from lcer_core.datasets.registry import DEFAULT_SEED, DatasetSpec, get_spec, known_datasets

__all__ = [
    "DEFAULT_SEED",
    "DatasetSpec",
    "PrepareResult",
    "PreparedDataset",
    "ensure_prepared",
    "get_spec",
    "is_prepared",
    "known_datasets",
    "load_prepared",
    "prepare",
    "prepare_dataset",
]
