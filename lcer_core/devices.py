"""Where tensors run: the default device, the validation of a device name, the device each
explanation shard takes (:func:`shard_device`), and the fixed CPU thread count of every
computation whose result is stored."""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import torch

from lcer_core.errors import InvalidParameterError

__all__ = [
    "ANSWER_THREADS",
    "answer_threads",
    "with_answer_threads",
    "default_device",
    "resolve_device",
    "shard_device",
    "device_label",
]

#: CPU threads (torch intra-op) of every computation whose result is stored: the pairs' top-K
#: and thresholds, the explainers, the metrics' re-rankings. A parallel reduction or matrix
#: product splits its work by thread count, and a different split rounds differently (one
#: float32 ULP is enough to change which optimisation step had the lowest loss), so answers
#: are computed with one fixed count, never "as many as there are cores": the same on a
#: 2-core laptop, a 64-core node and a Ray worker. Parallelism comes from running shards side
#: by side (the thread runner's pool, Ray's workers). Training keeps torch's default threads.
ANSWER_THREADS = 1

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextmanager
def answer_threads() -> Iterator[None]:
    """Run the block with :data:`ANSWER_THREADS` intra-op threads in this thread, then restore.

    torch's (OpenMP's and MKL's) thread count is per calling thread, so shards explained side
    by side in a thread pool each hold their own setting.
    """
    before = torch.get_num_threads()
    if before != ANSWER_THREADS:
        torch.set_num_threads(ANSWER_THREADS)
    try:
        yield
    finally:
        if before != ANSWER_THREADS:
            torch.set_num_threads(before)


def with_answer_threads(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate ``fn`` to run under :func:`answer_threads`."""

    @functools.wraps(fn)
    def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with answer_threads():
            return fn(*args, **kwargs)

    return wrapped


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


# Shards running in this process per CUDA device index (the lease of :func:`shard_device`).
_LEASES: dict[int, int] = {}
_LEASE_LOCK = threading.Lock()


@contextmanager
def shard_device(cuda_devices: int | None = None) -> Iterator[torch.device]:
    """The device of one explanation shard, for the block: the CPU when no CUDA is visible,
    else the visible CUDA device running the fewest shards of this process now (lowest index
    first), so that shards side by side spread over every GPU of the machine (a worker of the
    ``gpu`` pool with 8 GPUs uses all 8; a Ray worker sees only the GPU Ray gave it, as
    ``cuda:0``). Answers do not depend on which GPU: a shard's computation is the same on each.

    On leaving, memory this shard left in torch's CUDA cache is given back to the device: a
    long-lived worker (Ray with a GPU fraction, a thread pool) holds no memory of a shard
    that ended. Release what the shard allocated before leaving (compute in a function called
    inside the block). ``cuda_devices`` stands for ``torch.cuda.device_count()`` (tests).
    """
    count = cuda_devices if cuda_devices is not None else _cuda_count()
    if count < 1:
        yield torch.device("cpu")
        return
    with _LEASE_LOCK:
        index = min(range(count), key=lambda i: (_LEASES.get(i, 0), i))
        _LEASES[index] = _LEASES.get(index, 0) + 1
    try:
        yield torch.device("cuda", index)
    finally:
        with _LEASE_LOCK:
            _LEASES[index] -= 1
        if cuda_devices is None:
            gc.collect()  # a cycle may still hold the shard's tensors
            with torch.cuda.device(index):
                torch.cuda.empty_cache()


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_label(device: torch.device, accelerators: list[str] | None = None) -> str:
    """How the shards table names where a shard computed: the torch device (``cpu``, ``cuda:1``),
    and the GPU ids a Ray worker was given (``cuda:0 ray-gpu 3``; a logical GPU on a machine
    without CUDA: ``cpu ray-gpu 0``)."""
    name = str(device)
    return f"{name} ray-gpu {','.join(accelerators)}" if accelerators else name
