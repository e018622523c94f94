"""``lcer run``'s plan from its flags: a plan file (``--plan``), then the flags given beside it.

The rules, in order (docs/commands.md says the same):

1. ``--plan FILE`` (TOML, the fields of :class:`lcer_core.plan.Plan`) is the base; without it,
   the default plan.
2. A field flag given (``--k``, ``--users``, ``--seed``, ``--seeds``, ``--split-seeds``,
   ``--shard-size``, ``--epochs``, ``--budget``, the datasets) replaces the field.
3. ``--methods`` and ``--method`` (both may be given) replace the plan's methods; a method
   the file configures keeps its options.
4. Today's option flags (``--alpha``, ``--lam``, ``--steps``) and ``--set``/``--grid`` set
   options on top, each for the methods of the plan that declare it (``--set M.name=v``: for
   method M only); one that no method declares, or one given twice, is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lcer_core.cli.assignments import parse_assignments
from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import PAPER_METHODS, get_method
from lcer_core.plan import Plan, load_plan, make_plan
from lcer_core.runs import check_methods, split_options

__all__ = ["plan_from_flags"]


def _targets(item: str, methods: Sequence[str], flag: str) -> tuple[list[str], str]:
    """The methods ``item`` (``[M.]name=value``) sets an option of, and the item without ``M.``."""
    name, sep, value = item.partition("=")
    target, dot, option = name.strip().rpartition(".")
    if dot and target:
        if target not in methods:
            raise InvalidParameterError(
                f"{flag} {name.strip()}: {target} is not a method of the plan "
                f"({', '.join(methods)})"
            )
        return [target], f"{option}{sep}{value}"
    declaring = [m for m in methods if option in get_method(m).config_type.options]
    if sep and not declaring:
        raise InvalidParameterError(
            f"{flag} {option}: no method of the plan ({', '.join(methods)}) has this option"
        )
    return declaring, item


def _assignments(
    methods: Sequence[str], items: Sequence[str] | None, flag: str, *, many: bool
) -> dict[str, dict[str, Any]]:
    """``--set``/``--grid`` items as each method's {option: value(s)}, typed by its config."""
    routed: dict[str, list[str]] = {m: [] for m in methods}
    for item in items or ():
        targets, text = _targets(item, methods, flag)
        for method in targets or methods[:1]:  # a malformed item: refused by the parser
            routed[method].append(text)
    return {
        m: parse_assignments(texts, get_method(m).config_type, flag=flag, many=many)
        for m, texts in routed.items()
    }


def _explainers(
    base: Mapping[str, Any],
    methods: Sequence[str] | None,
    shorthand: Mapping[str, Any],
    sets: Sequence[str] | None,
    grids: Sequence[str] | None,
) -> dict[str, dict[str, Any]]:
    """The plan's explainers: ``base``'s (or ``methods`` with ``base``'s options for them),
    with the shorthand flags, ``--set`` and ``--grid`` on top."""
    names = check_methods(methods) if methods else list(base)
    fixed_by = _assignments(names, sets, "--set", many=False)
    grid_by = _assignments(names, grids, "--grid", many=True)
    out: dict[str, dict[str, Any]] = {}
    for method in names:
        given = base.get(method) or {}
        if not isinstance(given, Mapping):
            raise InvalidParameterError(f"plan: explainers.{method} must be a table")
        fixed, grid = dict(given.get("fixed") or {}), dict(given.get("grid") or {})
        short_fixed, short_grid = split_options(method, shorthand)
        for flag, generic, short in (
            ("--set", fixed_by[method], short_fixed),
            ("--grid", grid_by[method], short_grid),
        ):
            twice = sorted(set(generic) & set(short))
            if twice:
                raise InvalidParameterError(f"{flag} {twice[0]}: given by its own flag too")
        for name, value in {**short_fixed, **fixed_by[method]}.items():
            grid.pop(name, None)
            fixed[name] = value
        for name, values in {**short_grid, **grid_by[method]}.items():
            fixed.pop(name, None)
            grid[name] = values
        out[method] = {"fixed": fixed, "grid": grid}
    return out


def plan_from_flags(
    plan_file: Path | None,
    fields: Mapping[str, Any],
    *,
    methods: Sequence[str] | None = None,
    shorthand: Mapping[str, Any] | None = None,
    sets: Sequence[str] | None = None,
    grids: Sequence[str] | None = None,
) -> Plan:
    """The validated plan of ``plan_file`` (None: the default plan) with the ``fields`` given
    (None: not given) and the methods and options of the flags (see the module docstring)."""
    data = load_plan(plan_file) if plan_file is not None else {}
    given = {name: value for name, value in fields.items() if value is not None}
    base = data.get("explainers", {m: {} for m in PAPER_METHODS})
    if not isinstance(base, Mapping):
        return make_plan(data, **given)  # the model's one-line refusal
    explainers = _explainers(base, methods, shorthand or {}, sets, grids)
    return make_plan(data, **given, explainers=explainers)
