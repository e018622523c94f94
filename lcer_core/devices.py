"""Where tensors run: the default device and the validation of a device name."""

from __future__ import annotations

import torch

from lcer_core.errors import InvalidParameterError

__all__ = ["default_device", "resolve_device"]


def default_device() -> torch.device:
    """CUDA whenever it is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``; None: :func:`default_device`) as a device that
    exists here; anything else is a one-line error about ``param="device"``."""
    # The messages keep the CLI's flag until the CLI's error boundary translates ``param``.
    if name is None:
        return default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise InvalidParameterError(
            f"device must be cpu or cuda[:N], got {str(name)!r}", param="device"
        )
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        raise InvalidParameterError(
            f"device {name}: no CUDA device is visible here", param="device"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidParameterError(
            f"device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible",
            param="device",
        )
    return dev
