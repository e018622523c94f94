"""The recommender registry: every kind of recommender the pipeline trains, by its name.

A kind (:class:`RecommenderKind`) says how one recommender is configured, trained, rebuilt from
a checkpoint and scored; it registers itself with :func:`register` in its own module, a plugin
distribution through the ``lcer.recommenders`` entry-point group (as explainers do under
``lcer.explainers``). :func:`get_recommender` is the one place that refuses an unknown name;
:func:`kind_of` finds a kind by its config's type, so code holding a config needs no name.
Mult-VAE, the paper's, is :data:`DEFAULT_RECOMMENDER`: its model keys, checkpoints and MLflow
names are what they were before other kinds existed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import asdict
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from lcer_core.errors import InvalidParameterError, LcerError
from lcer_core.paper import PAPER_RECOMMENDER

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from lcer_core.recommender.base import Recommender
    from lcer_core.recommender.training import EpochReport, InteractionRows

__all__ = [
    "DEFAULT_RECOMMENDER",
    "GROUP",
    "RECOMMENDERS",
    "RecommenderKind",
    "get_recommender",
    "kind_of",
    "load_plugins",
    "register",
    "seal_builtins",
]

#: The paper's recommender: what every command trains unless told otherwise.
DEFAULT_RECOMMENDER = PAPER_RECOMMENDER
#: The entry-point group plugin distributions declare their recommender kinds under.
GROUP = "lcer.recommenders"


class RecommenderKind(ABC):
    """How one kind of recommender is configured, trained, rebuilt and scored (class methods only).

    ``config_type`` is a frozen dataclass whose fields determine the trained model (they go
    into its key); ``epochs`` is the number of training epochs a config asks for (progress).
    """

    name: ClassVar[str]
    #: How people write its name (``Mult-VAE``): progress bars and titles.
    title: ClassVar[str]
    config_type: ClassVar[type]

    @classmethod
    def config(cls, epochs: int | None = None) -> Any:
        """The default config; ``epochs`` replaces its training epochs where it has some."""
        if epochs is None or "epochs" not in cls.config_type.__dataclass_fields__:
            return cls.config_type()
        return cls.config_type(epochs=epochs)

    @classmethod
    def epochs(cls, config: Any) -> int:
        """How many epoch reports training with ``config`` yields."""
        return int(getattr(config, "epochs", 1))

    @classmethod
    def dump(cls, config: Any) -> dict[str, Any]:
        """``config`` as plain values (the checkpoint's, ``train.json``'s and MLflow's params)."""
        return asdict(config)

    @classmethod  # noqa: B027 - an optional hook
    def check(cls, n_items: int, config: Any) -> None:
        """Refuse (one line) a catalogue this kind cannot train on; nothing by default."""

    @classmethod
    @abstractmethod
    def build(cls, n_items: int, config: Any) -> nn.Module:
        """An untrained module over ``n_items`` items, to load a checkpoint's state into."""

    @classmethod
    @abstractmethod
    def fit(
        cls,
        train: Tensor | InteractionRows,
        val_fold_in: Tensor | InteractionRows,
        val_heldout: Tensor | InteractionRows,
        *,
        config: Any,
        seed: int,
        device: torch.device | str,
    ) -> Generator[EpochReport, None, nn.Module]:
        """Train on ``train``; yield one report per epoch; return the module (eval mode, on CPU).

        The module maps ``[B, M]`` interactions to ``[B, M]`` scores (what evaluation ranks
        and MLflow logs) and has an ``n_items`` attribute."""

    @classmethod
    @abstractmethod
    def recommender(cls, module: nn.Module, device: torch.device | str) -> Recommender:
        """The trained ``module`` behind the :class:`Recommender` seam, on ``device``."""


#: Every registered recommender kind by name.
RECOMMENDERS: dict[str, type[RecommenderKind]] = {}
#: The built-in kinds (registered when the package is imported): names no plugin may take.
BUILTINS: dict[str, type[RecommenderKind]] = {}

K = TypeVar("K", bound="type[RecommenderKind]")


def register(cls: K) -> K:
    """Class decorator: register a recommender kind under its ``name`` (a taken name is refused)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or "-" in name:
        raise InvalidParameterError(
            f"recommender kind {cls.__qualname__} needs a name without '-', got {name!r}"
        )
    taken = RECOMMENDERS.get(name)
    if taken is not None and taken is not cls:
        raise InvalidParameterError(
            f"recommender name {name!r} of {cls.__module__}.{cls.__qualname__} is taken by "
            f"{taken.__module__}.{taken.__qualname__}"
        )
    RECOMMENDERS[name] = cls
    return cls


def get_recommender(name: str) -> type[RecommenderKind]:
    """The recommender kind registered as ``name``; an unknown name is a one-line error."""
    kind = RECOMMENDERS.get(name) if isinstance(name, str) else None
    if kind is None and isinstance(name, str):
        load_plugins()
        kind = RECOMMENDERS.get(name)
    if kind is None:
        raise InvalidParameterError(
            f"unknown recommender {name!r}; known: {', '.join(sorted(RECOMMENDERS))}",
            param="recommender",
        )
    return kind


def kind_of(config: Any) -> type[RecommenderKind]:
    """The kind whose ``config_type`` ``config`` is (Mult-VAE's config: Mult-VAE)."""
    for kind in RECOMMENDERS.values():
        if type(config) is kind.config_type:
            return kind
    raise InvalidParameterError(f"no registered recommender takes a {type(config).__name__}")


def seal_builtins() -> None:
    """Mark every kind registered so far as built-in (the package calls it on import)."""
    BUILTINS.update(RECOMMENDERS)


def load_plugins() -> list[type[RecommenderKind]]:
    """Register the kinds installed distributions declare under :data:`GROUP`; a broken one,
    or one taking a built-in name, is one line."""
    loaded = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        where = f"recommender plugin {ep.name!r} ({ep.value})"
        if ep.name in BUILTINS:
            raise LcerError(f"{where} may not take the built-in recommender name {ep.name!r}")
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
            raise LcerError(f"{where} failed to import: {' '.join(str(exc).split())}") from None
        if not (isinstance(cls, type) and issubclass(cls, RecommenderKind)) or cls.name != ep.name:
            raise LcerError(f"{where} is not a RecommenderKind named {ep.name!r}")
        loaded.append(register(cls))
    return loaded
