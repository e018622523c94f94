"""One range check per shared parameter (k, α and λ, steps, users, seed, shard size, held-out
users; the environment's are :mod:`lcer_core.settings`') and for every name that becomes part of a
path (dataset names, model keys).

Each check is the only definition of its parameter's valid range; its message starts with the
parameter's library name and carries it as ``param`` (the command line shows its flag instead,
see :mod:`lcer_core.cli.flags`). α, λ and steps are checked by the configurations that hold
them (:class:`~lcer_core.explainers.LCERConfig`), through :func:`check_weight` and
:func:`check_steps`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from lcer_core.errors import InvalidParameterError

__all__ = [
    "NAME_RE",
    "check_name",
    "MAX_WEIGHT",
    "MAX_STEPS",
    "check_k",
    "check_weight",
    "check_steps",
    "check_users",
    "check_seed",
    "check_split_seed",
    "check_heldout",
    "check_shard_size",
]

#: A name usable as one folder (dataset names, model keys, bundle names), with ``fullmatch``:
#: no separator, no leading dot (so no ``..``), no "$" before a newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Upper bound of α and λ: beyond it the hinge or the length term swamps the other.
MAX_WEIGHT = 1e6
#: Upper bound of an optimiser's number of steps.
MAX_STEPS = 1_000_000


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_name(value: Any, param: str) -> str:
    """``value`` if it is a name usable as one folder (:data:`NAME_RE`); else a one-line error."""
    if not (isinstance(value, str) and NAME_RE.fullmatch(value)):
        raise InvalidParameterError(
            f"invalid {param} {value!r}: use letters, digits, '.', '_' or '-' (at most 64)",
            param=param,
        )
    return value


def check_k(k: Any) -> int:
    """``k`` (a list length) if it is a positive integer; else a one-line error."""
    if not (_is_int(k) and k >= 1):
        raise InvalidParameterError(f"k must be a positive integer, got {k}", param="k")
    return k


def check_weight(name: str, value: Any) -> float:
    """``value`` as a float if it is finite and in [0, MAX_WEIGHT) (α, λ); else a one-line error."""
    try:
        ok = math.isfinite(value) and 0 <= value < MAX_WEIGHT
    except TypeError:
        ok = False
    if not ok:
        raise InvalidParameterError(
            f"{name} must be a finite number in [0, 1e6), got {value}", param=name
        )
    return float(value)


def check_steps(steps: Any, name: str = "steps") -> int:
    """``steps`` if it is an integer in [1, MAX_STEPS]; else a one-line error."""
    if not (_is_int(steps) and 1 <= steps <= MAX_STEPS):
        raise InvalidParameterError(
            f"{name} must be an integer in [1, {MAX_STEPS}], got {steps}", param=name
        )
    return steps


def check_users(n_users: Any) -> int:
    """``n_users`` (how many test users) if it is a positive integer; else a one-line error."""
    if not (_is_int(n_users) and n_users >= 1):
        raise InvalidParameterError(
            f"n_users must be a positive integer, got {n_users}", param="n_users"
        )
    return n_users


def check_seed(seed: Any) -> int:
    """``seed`` if it is an integer in [0, 2^31); else a one-line error."""
    if not (_is_int(seed) and 0 <= seed < 2**31):
        raise InvalidParameterError(
            f"seed must be an integer in [0, 2^31), got {seed}", param="seed"
        )
    return seed


def check_split_seed(split_seed: Any) -> int:
    """``split_seed`` (which assignment of users to train/validation/test) if it is an integer
    in [0, 2^31 - 1]; else a one-line error."""
    if not (_is_int(split_seed) and 0 <= split_seed <= 2**31 - 1):
        raise InvalidParameterError(
            f"split_seed must be an integer in [0, 2^31 - 1], got {split_seed}",
            param="split_seed",
        )
    return split_seed


def check_shard_size(shard_size: Any) -> int:
    """``shard_size`` (test users per explanation shard) if it is a positive integer."""
    if not (_is_int(shard_size) and shard_size >= 1):
        raise InvalidParameterError(
            f"shard_size must be a positive integer, got {shard_size}", param="shard_size"
        )
    return shard_size


def check_heldout(heldout: Any) -> int:
    """``heldout`` (users held out for validation, and as many for test) if it is an integer >= 1."""
    if not (_is_int(heldout) and heldout >= 1):
        raise InvalidParameterError(f"heldout must be >= 1, got {heldout}", param="heldout")
    return heldout
