"""Range checks of the options that several commands share (k, α, λ, steps, users, seed)."""

from __future__ import annotations

import math

from lcer_core.errors import InvalidParameterError

__all__ = ["MAX_WEIGHT", "validate_common"]

#: Upper bound of α and λ: beyond it the hinge or the length term swamps the other (and
#: LCERConfig refuses it too).
MAX_WEIGHT = 1e6


def validate_common(
    *,
    k: int | None = None,
    alpha: float | None = None,
    lam: float | None = None,
    steps: int | None = None,
    n_users: int | None = None,
    seed: int | None = None,
) -> None:
    """One-line errors for out-of-range options shared by several commands."""
    if k is not None and not (isinstance(k, int) and k >= 1):
        raise InvalidParameterError(f"--k must be a positive integer, got {k}")
    if alpha is not None and not (math.isfinite(alpha) and 0 <= alpha < MAX_WEIGHT):
        raise InvalidParameterError(f"--alpha must be a finite number in [0, 1e6), got {alpha}")
    if lam is not None and not (math.isfinite(lam) and 0 <= lam < MAX_WEIGHT):
        raise InvalidParameterError(f"--lam must be a finite number in [0, 1e6), got {lam}")
    if steps is not None and not (isinstance(steps, int) and 1 <= steps <= 1_000_000):
        raise InvalidParameterError(f"--steps must be an integer in [1, 1000000], got {steps}")
    if n_users is not None and not (isinstance(n_users, int) and n_users >= 1):
        raise InvalidParameterError(f"--users must be a positive integer, got {n_users}")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**31):
        raise InvalidParameterError(f"--seed must be an integer in [0, 2^31), got {seed}")
