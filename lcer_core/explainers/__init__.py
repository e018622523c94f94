"""Explanation methods behind one interface, and the registry that names them.

Each method's module registers it (:func:`~lcer_core.explainers.registry.register`); importing
this package imports the built-in ones, then the plugins that installed distributions declare
under the ``lcer.explainers`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers.accent import Accent, AccentConfig
from lcer_core.explainers.amortised import Amortised, AmortisedConfig
from lcer_core.explainers.base import Explainer, ExplainerConfig, Explanations
from lcer_core.explainers.fia import FIA, FIAConfig
from lcer_core.explainers.kaffes import KaffesCE, KaffesConfig, KaffesTopK, KaffesTopKConfig
from lcer_core.explainers.kaffes_ps import KaffesPS, KaffesPSConfig
from lcer_core.explainers.lcer import LCER, LCERConfig, lcer_reference_loop
from lcer_core.explainers.lcer_plus import LCERPlus, LCERPlusConfig
from lcer_core.explainers.random_prefix import RandomPrefix, RandomPrefixConfig
from lcer_core.explainers.registry import (
    METHODS,
    PAPER_METHODS,
    PAPER_SWEEP_METHOD,
    get_method,
    load_plugins,
    loaded_plugins,
    register,
    seal_builtins,
)

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
    "Amortised",
    "AmortisedConfig",
    "KaffesCE",
    "KaffesConfig",
    "KaffesTopK",
    "KaffesTopKConfig",
    "KaffesPS",
    "KaffesPSConfig",
    "RandomPrefix",
    "RandomPrefixConfig",
    "METHODS",
    "PAPER_METHODS",
    "PAPER_SWEEP_METHOD",
    "register",
    "get_method",
    "loaded_plugins",
    "make_config",
    "get_explainer",
]


def make_config(method: str, **params: Any) -> ExplainerConfig:
    """``method``'s config with ``params`` set (None: the field's default); a field the method
    does not have is refused, never dropped."""
    cls = get_method(method).config_type
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(params) - fields)
    if unknown:
        raise InvalidParameterError(
            f"method {method!r} has no parameter(s) {', '.join(unknown)}", param=unknown[0]
        )
    return cls(**{k: v for k, v in params.items() if v is not None})


def get_explainer(method: str, **params: Any) -> Explainer:
    """An explainer by name, configured with ``params`` (see :func:`make_config`)."""
    return get_method(method)(make_config(method, **params))


seal_builtins()  # every method registered so far is built-in: no plugin may take or replace one
load_plugins()  # the explainers installed distributions declare (entry points lcer.explainers)
