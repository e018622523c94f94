"""The performance benchmark behind ``lcer bench``: the reference's shape against our engine.

(a) the sequential loop (:func:`~lcer_core.explainers.lcer.lcer_reference_loop`: one pair at a
time, an importance vector over all items, a dense forward pass, ``torch.optim.Adam``) on a
sample of pairs; (b) the batched engine on all pairs, on the same data, model and seeds. Both
draw the same noise, so their metrics on the sample can be compared directly.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from lcer_core import checks
from lcer_core.datasets import ensure_prepared
from lcer_core.devices import ANSWER_THREADS, answer_threads, resolve_device
from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import LCER, LCERConfig, lcer_reference_loop
from lcer_core.explanations import Explanations
from lcer_core.metrics import evaluate_pairs, summarize
from lcer_core.models import check_model_data, ensure_model, find_model
from lcer_core.pairs import PairBatch, build_pairs, histories_from_lists, make_pairs, test_users
from lcer_core.recommender.multvae import MultVAE, MultVAEConfig, MultVAERecommender

__all__ = ["BenchSetup", "run_benchmark", "estimate_flops"]


def estimate_flops(pairs: PairBatch, steps: int, hidden: int = 600, latent: int = 200) -> float:
    """Floating-point operations of the batched engine: per pair and step, the forward pass over
    the pair's interacted items (embedding bag L·H, H·d, d·H, the target's H) and a backward pass
    counted as twice the forward."""
    lengths = pairs.mask.sum(1).double()
    forward = 2 * (lengths * hidden + 2 * hidden * latent + hidden)
    return float(forward.sum()) * 3 * steps


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


#: Synthetic histories reach 600 items: the catalogue must leave room for a top-K beside them.
SYNTHETIC_ITEMS_RANGE = (1000, 1_000_000)


def _synthetic(
    n_items: int, n_users: int, seed: int, device: str, k: int = 5
) -> tuple[MultVAERecommender, PairBatch, int]:
    """An untrained Mult-VAE over ``n_items`` and users with ML-100K-like history lengths."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rec = MultVAERecommender(MultVAE(n_items, MultVAEConfig()), device)
    lengths = (torch.distributions.LogNormal(3.5, 0.8).sample((n_users,)).clamp(4, 600)).long()
    lists = [torch.randperm(n_items, generator=gen)[: int(n)].tolist() for n in lengths]
    return rec, build_pairs(rec, histories_from_lists(list(range(n_users)), lists), k), n_items


def _stage(
    progress: Callable[[str, int, int], None] | None, stage: str
) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


@dataclass(frozen=True)
class BenchSetup:
    """What ``lcer bench`` runs on, beside LCER's configuration: the dataset (or a synthetic
    catalogue of ``synthetic_items``), K, the test users, the sequential loop's ``sample`` of
    pairs (all with ``full``), the device and the seed."""

    dataset: str = "ml-100k"
    k: int = 5
    n_users: int | None = None
    sample: int = 5
    full: bool = False
    synthetic_items: int | None = None
    device: str | None = None
    seed: int = 0

    def check(self) -> None:
        """Refuse a bad field in one line (the LCER config checks its own), in the CLI's order."""
        checks.check_k(self.k)
        if self.n_users is not None:
            checks.check_users(self.n_users)
        checks.check_seed(self.seed)
        if not (isinstance(self.sample, int) and self.sample >= 1):
            raise InvalidParameterError(
                f"sample must be a positive integer, got {self.sample}", param="sample"
            )
        lo, hi = SYNTHETIC_ITEMS_RANGE
        if self.synthetic_items is not None and not (lo <= self.synthetic_items <= hi):
            raise InvalidParameterError(
                f"synthetic_items must be in [{lo}, {hi}], got {self.synthetic_items}",
                param="synthetic_items",
            )


def _load(
    setup: BenchSetup,
    dev: str,
    log: Callable[[str], None],
    on_epoch: Callable[[Any], None] | None,
) -> tuple[MultVAERecommender, PairBatch, int, str]:
    """The recommender, its pairs, the catalogue's size and the source's name to benchmark on."""
    k, n_users, items = setup.k, setup.n_users, setup.synthetic_items
    if items is not None:
        rec, pairs, n_items = _synthetic(items, n_users or 100, setup.seed, dev, k)
        return rec, pairs, n_items, f"synthetic-{items}"
    data = ensure_prepared(setup.dataset)
    model = find_model(setup.dataset)  # the latest trained model, as `lcer explain` uses
    if model is None:
        model, _ = ensure_model(data, device=dev, on_epoch=on_epoch)
        log(f"trained Mult-VAE {model.key} for {setup.dataset}")
    check_model_data(model, data)
    rec = model.recommender(dev)
    pairs = make_pairs(rec, data, test_users(data, n_users, strict=True), k)
    return rec, pairs, data.n_items, setup.dataset


def _sample(pairs: PairBatch, sample: int, full: bool) -> tuple[torch.Tensor, PairBatch]:
    """The indices and pairs the sequential loop runs on: all with ``full``, else ``sample``."""
    n_seq = len(pairs) if full else min(sample, len(pairs))
    # Spread the sample over users and ranks.
    sample_idx = torch.linspace(0, len(pairs) - 1, n_seq).round().long().unique()
    return sample_idx, pairs.select(sample_idx.to(pairs.items.device))


def _speed(
    pairs: PairBatch, seq_pairs: PairBatch, steps: int, seq_s: float, fast_s: float
) -> dict[str, float]:
    """Seconds per pair of both runs, the speed-up, and the engine's work and throughput."""
    flops = estimate_flops(pairs, steps)
    return {
        "sequential_s_per_pair": seq_s / len(seq_pairs),
        "batched_s_per_pair": fast_s / len(pairs),
        "batched_total_s": fast_s,
        "speedup": (seq_s / len(seq_pairs)) / (fast_s / len(pairs)),
        "gflop": flops / 1e9,
        "gflop_per_s": flops / 1e9 / fast_s,
    }


def _sync(dev: str) -> None:
    """Wait for the device's queued work, so that a timing includes it."""
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _time_sequential(
    rec: MultVAERecommender, seq_pairs: PairBatch, cfg: LCERConfig, seed: int, dev: str
) -> tuple[Explanations, float]:
    """The reference loop's explanations of ``seq_pairs`` and its time, after a warm-up."""
    lcer_reference_loop(rec, seq_pairs.select(slice(0, 1)), LCERConfig(steps=20), seed=seed)
    _sync(dev)  # warmed up, as the batched engine is
    t0 = time.perf_counter()
    seq = lcer_reference_loop(rec, seq_pairs, cfg, seed=seed)
    _sync(dev)
    return seq, time.perf_counter() - t0


def _time_batched(
    rec: MultVAERecommender,
    pairs: PairBatch,
    cfg: LCERConfig,
    seed: int,
    dev: str,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[Explanations, float]:
    """The batched engine's explanations of all ``pairs`` and its time, after a warm-up."""
    LCER(replace(cfg, steps=5)).explain(rec, pairs.select(slice(0, 2)), seed=seed)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    fast = LCER(cfg).explain(rec, pairs, seed=seed, progress=_stage(progress, "batched engine"))
    _sync(dev)
    return fast, time.perf_counter() - t0


def _compare(
    rec: MultVAERecommender,
    pairs: PairBatch,
    seq_pairs: PairBatch,
    sample_idx: torch.Tensor,
    seq: Explanations,
    fast: Explanations,
) -> dict[str, Any]:
    """The two runs' metrics, the engine's on the sample too, and how often their sets agree."""
    fast_metrics = summarize(evaluate_pairs(rec, pairs, fast))
    fast_on_sample = summarize(
        evaluate_pairs(
            rec, seq_pairs, fast.__class__(fast.removed[sample_idx], fast.importance[sample_idx])
        )
    )
    seq_metrics = summarize(evaluate_pairs(rec, seq_pairs, seq))
    agree = float(
        (seq.removed == fast.removed[sample_idx][:, : seq.removed.shape[1]]).all(1).float().mean()
    )
    return {
        "same_sets_on_sample_pct": 100 * agree,
        "metrics_batched": fast_metrics,
        "metrics_batched_on_sample": fast_on_sample,
        "metrics_sequential": seq_metrics,
    }


def _early_stop(
    rec: MultVAERecommender,
    pairs: PairBatch,
    early_cfg: LCERConfig,
    fast_s: float,
    seed: int,
    dev: str,
    log: Callable[[str], None],
    progress: Callable[[str, int, int], None] | None,
) -> dict[str, Any]:
    """The batched engine with early stop: its time, the work it saves and its metrics."""
    patience, min_delta, steps = early_cfg.patience, early_cfg.min_delta, early_cfg.steps
    log(f"batched engine with early stop (patience {patience}, min delta {min_delta}) ...")
    _sync(dev)
    t0 = time.perf_counter()
    early = LCER(early_cfg).explain(rec, pairs, seed=seed, progress=_stage(progress, "early stop"))
    _sync(dev)
    early_s = time.perf_counter() - t0
    return {
        "patience": patience,
        "min_delta": min_delta,
        "early_stop_s_per_pair": early_s / len(pairs),
        "early_stop_speedup_over_batched": fast_s / early_s,
        # the work early stop saves, before what it costs to realise: pair-steps run,
        # as a share of the full run's
        "early_stop_pair_steps_pct": 100.0 * float(early.steps.sum()) / (len(pairs) * steps)
        if early.steps is not None
        else None,
        "metrics_early_stop": summarize(evaluate_pairs(rec, pairs, early)),
    }


def run_benchmark(
    config: LCERConfig = LCERConfig(),
    setup: BenchSetup = BenchSetup(),
    *,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[Any], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Time the sequential loop and the batched engine with LCER's ``config`` on ``setup``;
    return the fields of ``lcer bench --json``.

    Both modes run ``config`` with its fixed number of steps (the paper's); when it has a
    ``patience``, the batched engine with early stop is measured too. ``on_epoch`` sees each
    training epoch (when a model must be trained first) and ``progress(stage, done, total)``
    the steps of the batched runs, for a progress bar.
    """
    cfg = replace(config, patience=0, min_delta=0.0)  # the paper's fixed number of steps
    setup.check()
    seed, steps = setup.seed, cfg.steps
    dev = str(resolve_device(setup.device))
    rec, pairs, n_items, source = _load(setup, dev, log, on_epoch)
    sample_idx, seq_pairs = _sample(pairs, setup.sample, setup.full)
    log(f"sequential reference loop: {len(seq_pairs)} pairs x {steps} steps ...")
    with answer_threads():  # the batched engine computes with the same thread count
        seq, seq_s = _time_sequential(rec, seq_pairs, cfg, seed, dev)
    log(f"batched engine: {len(pairs)} pairs x {steps} steps ...")
    fast, fast_s = _time_batched(rec, pairs, cfg, seed, dev, progress)
    comparison = _compare(rec, pairs, seq_pairs, sample_idx, seq, fast)
    result: dict[str, Any] = {
        "source": source,
        "device": dev,
        "cpu": platform.processor() or platform.machine(),
        "threads": ANSWER_THREADS,
        "n_items": n_items,
        "pairs": len(pairs),
        "sequential_pairs": len(seq_pairs),
        "steps": steps,
        "k": setup.k,
        **{name: getattr(cfg, name) for name in cfg.grid},  # α and λ
        **_speed(pairs, seq_pairs, steps, seq_s, fast_s),
        "peak_rss_mb": _peak_rss_mb(),
        **comparison,
    }
    if dev.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if config.patience:
        result.update(_early_stop(rec, pairs, config, fast_s, seed, dev, log, progress))
    return result
