"""Counter-based random numbers: the same value for the same (seed, pair, step, item, slot).

Explanations must not depend on how pairs are batched or sharded, nor on the order
in which a device draws random numbers. Hashing the coordinates of each draw gives
noise that is a pure function of them, identical in the sequential reference loop
and the batched engine, on CPU and CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hash_uniform", "mix", "stream_logistic", "stream_uniform"]

_M32 = 0xFFFFFFFF


def _lowbias32(x: Tensor) -> Tensor:
    # Chris Wellons' lowbias32 finaliser, on int64 holding 32-bit values (products wrap; we mask).
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    x = x ^ (x >> 16)
    return x


def mix(*keys: Tensor | int) -> Tensor:
    """Combine integer keys (tensors broadcast together) into one 32-bit hash per element."""
    h: Tensor | None = None
    for key in keys:
        k = key if isinstance(key, Tensor) else torch.tensor(key, dtype=torch.long)
        k = k.long()
        h = _lowbias32(k + 0x9E3779B9) if h is None else _lowbias32(h ^ _lowbias32(k + 0x9E3779B9))
    assert h is not None
    return h


def hash_uniform(*keys: Tensor | int) -> Tensor:
    """Uniform floats in [0, 1) (24-bit resolution) from the hash of ``keys``."""
    return (mix(*keys) >> 8).float() * (1.0 / (1 << 24))


def _draw(base: Tensor, counter: int) -> Tensor:
    """24-bit integers of draw number ``counter`` of the streams keyed by ``base``."""
    return _lowbias32(base ^ _lowbias32(torch.tensor(counter + 0x9E3779B9, dtype=torch.long))) >> 8


def stream_uniform(base: Tensor, counter: int) -> Tensor:
    """Uniform floats in [0, 1) for draw number ``counter`` of the streams keyed by ``base``
    (a tensor of :func:`mix` hashes): one hash round per draw, cheap enough for every step."""
    return _draw(base, counter).float() * (1.0 / (1 << 24))


def stream_logistic(base: Tensor, counter: int) -> Tensor:
    """Standard logistic noise (the difference of two independent Gumbel(0, 1) draws) for draw
    ``counter`` of the streams ``base``: log(u / (1 − u)) with u = (j + ½)/2^23 on a 23-bit
    grid, where j + ½ and 2^23 − j − ½ are both exact in float32, so the value is always finite
    (|noise| < 16) and symmetric."""
    j = (_draw(base, counter) >> 1).float()
    return torch.log(j + 0.5) - torch.log((1 << 23) - 0.5 - j)
