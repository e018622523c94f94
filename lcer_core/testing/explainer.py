"""The explainer contract as plain functions: what every :class:`Explainer` promises.

Each ``check_*`` raises :class:`ContractError` (an ``AssertionError``) naming the method and
the broken promise; :func:`check_explainer` runs them all. No test framework is needed:
``lcer_core.testing.suites`` wraps the same checks as pytest classes to subclass.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers.base import SELECTION_TESTS, Explainer, ExplainerConfig
from lcer_core.explanations import Explanations
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender
from lcer_core.testing.claims import Claim

__all__ = [
    "ContractError",
    "ProgressLog",
    "hostile_values",
    "declared_options",
    "check_config",
    "check_selects_on",
    "check_bad_options",
    "check_empty_batch",
    "check_output",
    "check_same_seed",
    "check_batch_independent",
    "check_claim",
    "check_progress",
    "check_explainer",
]

#: Importance values of two runs count as equal within these tolerances (batched matrix
#: products of different shapes may round differently); removed sets must be identical.
ATOL, RTOL = 1e-5, 1e-4


class ContractError(AssertionError):
    """A component breaks a promise of its interface."""


def _fail(who: str, message: str) -> None:
    raise ContractError(f"{who}: {message}")


def _name(explainer_cls: type[Explainer]) -> str:
    return getattr(explainer_cls, "name", explainer_cls.__name__)


def declared_options(config_type: type[ExplainerConfig]) -> tuple[str, ...]:
    """The options a run may set (``config_type.options``; none where it declares none)."""
    return tuple(getattr(config_type, "options", ()))


def hostile_values(default: Any) -> list[Any]:
    """Values of the default's own type that no sane option accepts all of."""
    if isinstance(default, bool) or default is None:
        return []
    if isinstance(default, int):
        return [-1, 0, 10**15]
    if isinstance(default, float):
        return [math.nan, -math.inf, math.inf, -1.0]
    if isinstance(default, str):
        return ["no-such-" + default, ""]
    return []


def check_selects_on(explainer_cls: type[Explainer]) -> None:
    """``selects_on``: a frozenset of the known evaluation tests (:data:`SELECTION_TESTS`),
    and what :meth:`Explainer.selects` says for the default configuration."""
    who = _name(explainer_cls)
    declared = getattr(explainer_cls, "selects_on", None)
    if not isinstance(declared, frozenset):
        _fail(who, f"selects_on must be a frozenset, got {type(declared).__name__}")
    unknown = sorted(str(t) for t in declared - SELECTION_TESTS)
    if unknown:
        _fail(who, f"selects_on names unknown test(s) {unknown}; known: {sorted(SELECTION_TESTS)}")
    selects = explainer_cls(explainer_cls.config_type()).selects()
    if selects != declared:
        _fail(
            who, f"selects() is {sorted(selects)} with the default config, not {sorted(declared)}"
        )


def check_config(explainer_cls: type[Explainer], config: ExplainerConfig | None = None) -> None:
    """Config: a frozen dataclass whose default builds; ``dump_config()`` is JSON and round-trips."""
    who = _name(explainer_cls)
    if not (isinstance(getattr(explainer_cls, "name", None), str) and explainer_cls.name):
        _fail(who, "has no `name`")
    ctype = explainer_cls.config_type
    if not (isinstance(ctype, type) and issubclass(ctype, ExplainerConfig)):
        _fail(who, f"config_type {ctype!r} is not an ExplainerConfig subclass")
    if not dataclasses.is_dataclass(ctype) or not ctype.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        _fail(who, f"{ctype.__name__} must be a frozen dataclass")
    if not isinstance(getattr(explainer_cls, "reports_validity", None), bool):
        _fail(who, "reports_validity must be a bool")
    check_selects_on(explainer_cls)
    fields = {f.name for f in dataclasses.fields(ctype)}
    options = declared_options(ctype)
    if not set(options) <= fields:
        _fail(who, f"options {sorted(set(options) - fields)} are not fields of {ctype.__name__}")
    if not set(getattr(ctype, "grid", ())) <= set(options):
        _fail(who, "every grid option must be one of the options")
    for cfg in (ctype(), config) if config is not None else (ctype(),):
        explainer = explainer_cls(cfg)
        dump = explainer.dump_config()
        if dump.get("method") != explainer_cls.name:
            _fail(who, f"dump_config()['method'] is {dump.get('method')!r}")
        try:
            text = json.dumps(dump, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            _fail(who, f"dump_config() is not JSON: {exc}")
        back = {k: v for k, v in json.loads(text).items() if k != "method"}
        if set(back) != fields:
            _fail(who, f"dump_config() fields {sorted(back)} are not the config's {sorted(fields)}")
        try:
            again = ctype(**back)
        except Exception as exc:  # noqa: BLE001 - any failure is the contract's finding
            _fail(who, f"config_type(**dump) fails: {type(exc).__name__}: {exc}")
        if again != cfg:
            _fail(who, "config_type(**dump_config()) differs from the config it was dumped from")
    defaults_for = getattr(ctype, "defaults_for", None)
    if defaults_for is not None:
        extra = defaults_for("ml-100k")
        if not (isinstance(extra, dict) and set(extra) <= set(options)):
            _fail(who, f"defaults_for('ml-100k') must be a dict of options, got {extra!r}")
        ctype(**extra)


def check_bad_options(explainer_cls: type[Explainer]) -> None:
    """A bad value of a declared option is an InvalidParameterError naming it; for every field,
    a hostile value of its type is refused that way or accepted, never another exception."""
    who = _name(explainer_cls)
    ctype = explainer_cls.config_type
    defaults = ctype()
    declared = set(getattr(ctype, "options", ()))
    for field in dataclasses.fields(ctype):
        option = field.name
        values = hostile_values(getattr(defaults, option))
        refused = False
        for value in values:
            try:
                ctype(**{option: value})
            except InvalidParameterError as exc:
                named = getattr(exc, "param", None) == option or option in str(exc)
                if not named:
                    _fail(who, f"refuses {option}={value!r} without naming it: {exc}")
                if "\n" in str(exc):
                    _fail(who, f"the message for {option}={value!r} is not one line")
                refused = True
            except Exception as exc:  # noqa: BLE001
                _fail(
                    who,
                    f"{option}={value!r} raises {type(exc).__name__}, not InvalidParameterError",
                )
        if option in declared and values and not refused:
            _fail(who, f"accepts every one of {values!r} for option {option!r}")


def _equal(a: Explanations, b: Explanations, widths: Tensor | None = None) -> str | None:
    """Why ``a`` and ``b`` differ (None when they agree), on the first ``widths`` items of each row."""
    width = min(a.removed.shape[1], b.removed.shape[1])
    ra, rb = a.removed[:, :width].cpu(), b.removed[:, :width].cpu()
    ia, ib = a.importance[:, :width].cpu(), b.importance[:, :width].cpu()
    if not torch.equal(ra, rb):
        rows = (ra != rb).any(1).nonzero()[:, 0].tolist()
        return f"removed sets differ at pairs {rows[:10]}"
    if not torch.equal(ia.isnan(), ib.isnan()):
        return "importance is NaN at different places"
    if not torch.allclose(ia.nan_to_num(0.0), ib.nan_to_num(0.0), atol=ATOL, rtol=RTOL):
        return f"importance differs by up to {float((ia - ib).nan_to_num(0.0).abs().max()):.3g}"
    for field in ("steps", "forward_calls"):
        x, y = getattr(a, field), getattr(b, field)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x.cpu(), y.cpu())):
            return f"{field} differ"
    return None


def check_empty_batch(explainer: Explainer, recommender: Recommender, pairs: PairBatch) -> None:
    """No pairs in, no pairs out: ``[0, L]`` tensors, no call into the method."""
    who = explainer.name
    empty = pairs.select(torch.zeros(0, dtype=torch.long, device=pairs.targets.device))
    out = explainer.explain(recommender, empty, seed=0)
    if out.removed.shape[0] != 0 or out.importance.shape[0] != 0:
        _fail(who, f"an empty batch gives {tuple(out.removed.shape)} sets")
    if out.removed.dtype != torch.bool or not out.importance.is_floating_point():
        _fail(who, "an empty batch gives the wrong dtypes")


def check_output(
    explainer: Explainer, recommender: Recommender, pairs: PairBatch, out: Explanations
) -> None:
    """Shapes, dtypes and device of ``out``; sets within the history, importance NaN outside it."""
    who = explainer.name
    shape, n = tuple(pairs.mask.shape), len(pairs)
    for field, tensor in (("removed", out.removed), ("importance", out.importance)):
        if tuple(tensor.shape) != shape:
            _fail(who, f"{field} has shape {tuple(tensor.shape)}, the pairs {shape}")
        if tensor.device != recommender.device:
            _fail(who, f"{field} is on {tensor.device}, the recommender on {recommender.device}")
    if out.removed.dtype != torch.bool:
        _fail(who, f"removed is {out.removed.dtype}, not bool")
    if not out.importance.is_floating_point():
        _fail(who, f"importance is {out.importance.dtype}, not floating point")
    mask = pairs.mask.to(recommender.device)
    if (out.removed & ~mask).any():
        _fail(who, "a set holds an item outside the user's history (padding)")
    if not out.importance[~mask].isnan().all():
        _fail(who, "importance is not NaN outside the history")
    empty = ~mask.any(1)
    if out.removed[empty].any():
        _fail(who, "a pair with an empty history has a set")
    for field in ("steps", "forward_calls"):
        t = getattr(out, field)
        if t is not None and (tuple(t.shape) != (n,) or t.dtype != torch.long or (t < 0).any()):
            _fail(who, f"{field} must be None or [P] non-negative long, got {t}")


def check_same_seed(
    explainer_cls: type[Explainer],
    config: ExplainerConfig,
    recommender: Recommender,
    pairs: PairBatch,
    out: Explanations,
    seed: int,
) -> None:
    """A fresh explainer with the same config and seed gives the same answer."""
    again = explainer_cls(config).explain(recommender, pairs, seed=seed)
    why = _equal(out, again)
    if why:
        _fail(explainer_cls.name, f"same seed, different answer: {why}")


def _parts(n: int) -> Iterator[Tensor]:
    """Two uneven halves in a shuffled order, then the first pair alone: batches a method might see."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    cut = max(1, n // 3)
    yield order[:cut]
    yield order[cut:]
    yield torch.arange(min(n, 1))


def check_batch_independent(
    explainer_cls: type[Explainer],
    config: ExplainerConfig,
    recommender: Recommender,
    pairs: PairBatch,
    out: Explanations,
    seed: int,
) -> None:
    """Each pair's answer does not depend on which other pairs share its batch."""
    for index in _parts(len(pairs)):
        if not len(index):
            continue
        index = index.to(pairs.targets.device)
        part = explainer_cls(config).explain(recommender, pairs.select(index), seed=seed)
        whole = Explanations(
            out.removed[index.to(out.removed.device)],
            out.importance[index.to(out.removed.device)],
            None if out.steps is None else out.steps[index.to(out.steps.device)],
            None,  # calls may be shared between pairs of one batch
        )
        why = _equal(whole, Explanations(part.removed, part.importance, part.steps, None))
        if why:
            _fail(explainer_cls.name, f"the answer depends on the batch: {why}")


def check_claim(
    explainer: Explainer,
    recommender: Recommender,
    pairs: PairBatch,
    out: Explanations,
    claim: Claim,
) -> int:
    """Every set found does what the method claims; returns how many pairs have a set."""
    found = out.found
    held = claim(recommender, pairs, out).to(found.device)
    broken = (found & ~held).nonzero()[:, 0].tolist()
    if broken:
        _fail(explainer.name, f"the sets of pairs {broken[:10]} fail {claim.__name__}")
    return int(found.sum())


class ProgressLog:
    """A progress callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


def check_progress(explainer: Explainer, log: ProgressLog) -> None:
    """Progress is reported, never goes back, stays within its total and ends at it."""
    who = explainer.name
    if not log.calls:
        _fail(who, "never reported progress")
    for (d0, _), (d1, _) in zip(log.calls, log.calls[1:], strict=False):
        if d1 < d0:
            _fail(who, f"progress went back from {d0} to {d1}")
    for done, total in log.calls:
        if not (isinstance(done, int) and isinstance(total, int) and 0 <= done <= total):
            _fail(who, f"progress({done!r}, {total!r}) is out of range")
    done, total = log.calls[-1]
    if done != total:
        _fail(who, f"progress ended at {done} of {total}")


def check_explainer(
    explainer_cls: type[Explainer],
    recommender: Recommender,
    pairs: PairBatch,
    *,
    config: ExplainerConfig | None = None,
    claim: Claim | None = None,
    batch_independent: bool = True,
    seed: int = 3,
) -> Explanations:
    """Run the whole explainer contract on ``pairs``; returns the explanations it checked."""
    check_config(explainer_cls, config)
    check_bad_options(explainer_cls)
    config = config if config is not None else explainer_cls.config_type()
    explainer = explainer_cls(config)
    check_empty_batch(explainer, recommender, pairs)
    log = ProgressLog()
    out = explainer.explain(recommender, pairs, seed=seed, progress=log)
    check_output(explainer, recommender, pairs, out)
    check_progress(explainer, log)
    check_same_seed(explainer_cls, config, recommender, pairs, out, seed)
    if batch_independent:
        check_batch_independent(explainer_cls, config, recommender, pairs, out, seed)
    if claim is not None:
        if not explainer_cls.reports_validity:
            _fail(explainer_cls.name, "claims counterfactual sets but reports_validity is False")
        check_claim(explainer, recommender, pairs, out, claim)
    return out
