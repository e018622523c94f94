"""Explanation methods behind one interface, and the registry that names them."""

from __future__ import annotations

from typing import Any

from lcer_core.errors import InvalidParameterError, UnknownMethodError
from lcer_core.explainers.accent import Accent, AccentConfig
from lcer_core.explainers.base import Explainer, ExplainerConfig, Explanations
from lcer_core.explainers.fia import FIA, FIAConfig
from lcer_core.explainers.kaffes import KaffesCE, KaffesConfig, KaffesTopK, KaffesTopKConfig
from lcer_core.explainers.lcer import LCER, LCERConfig, lcer_reference_loop
from lcer_core.explainers.lcer_plus import LCERPlus, LCERPlusConfig

__all__ = [
    "Explainer",
    "ExplainerConfig",
    "Explanations",
    "LCER",
    "LCERConfig",
    "lcer_reference_loop",
    "LCERPlus",
    "LCERPlusConfig",
    "FIA",
    "FIAConfig",
    "Accent",
    "AccentConfig",
    "KaffesCE",
    "KaffesConfig",
    "KaffesTopK",
    "KaffesTopKConfig",
    "METHODS",
    "PAPER_METHODS",
    "LCER_METHODS",
    "get_explainer",
]


#: Every explanation method by its name in the CLI, the flows and the results store.
METHODS: dict[str, type[Explainer]] = {
    "lcer": LCER,
    "fia": FIA,
    "accent": Accent,
    "kaffes": KaffesCE,
    "kaffes-topk": KaffesTopK,
    "lcer-plus": LCERPlus,
}

#: Methods that take LCER's hyperparameters α, λ and steps (and run once per (α, λ)).
LCER_METHODS: tuple[str, ...] = ("lcer", "lcer-plus")

#: The paper's four methods: what the pipeline runs when no methods are given.
PAPER_METHODS: tuple[str, ...] = ("lcer", "fia", "accent", "kaffes")


def get_explainer(method: str, **params: Any) -> Explainer:
    """An explainer by name, configured with the parameters its config type knows (others ignored
    only if they are the shared LCER hyperparameters α/λ/steps, which baselines do not have)."""
    cls = METHODS.get(method)
    if cls is None:
        raise UnknownMethodError(f"unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
    fields = set(cls.config_type.__dataclass_fields__)
    shared = {"alpha", "lam", "steps", "patience", "min_delta"}
    unknown = set(params) - fields - shared
    if unknown:
        raise InvalidParameterError(
            f"method {method!r} has no parameter(s) {', '.join(sorted(unknown))}"
        )
    return cls(
        cls.config_type(**{k: v for k, v in params.items() if k in fields and v is not None})
    )


# --- TEMPORARY (helper "contracts"): until helper "config"'s registry.py is merged, plugins are
# registered here; the integrator drops this block for `load_plugins(register)` in the registry.
def _register_plugin(cls: type[Explainer]) -> None:
    if METHODS.get(cls.name) is cls:
        return
    if cls.name in METHODS:
        raise InvalidParameterError(f"method name {cls.name!r} is already taken")
    METHODS[cls.name] = cls


from lcer_core.explainers.plugins import load_plugins  # noqa: E402

load_plugins(_register_plugin)
