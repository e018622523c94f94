"""Two explanation shards on one GPU, and Mult-VAE trained on a GPU worker (issue 26, item 4).

    python scripts/gpu_share_bench.py syn-epinions --users 20 --steps 3000 --json OUT.json

On a machine with CUDA and a trained model of DATASET in ``LCER_HOME`` (``scripts/device_scale.sh``
prepares both). Measures, for LCER shards of ``--users`` test users each at K = 5:

- ``one_by_one``: two shards after each other on ``cuda:0`` (one process), each shard's peak
  GPU memory and what torch still reserves once it ended (``shard_device`` gives it back);
- ``side_by_side``: the same two shards at once on ``cuda:0``, in two processes (what a Ray
  node does with ``LCER_RAY_GPUS_PER_SHARD=0.5``), each process's peak GPU memory;
- ``ray_half_gpu`` (when Ray is installed): the two shards as Ray tasks of ``num_gpus=0.5``
  and ``max_calls=0`` on a local one-GPU Ray, the GPU ids Ray gave them, whether they
  overlapped, and whether a long-lived worker's second shard found its memory given back;
- ``train_on_gpu``: Mult-VAE (``--epochs``) trained in another process on the GPU and its
  checkpoint sent back as bytes (:func:`lcer_core.models.model_bytes`), as ``LCER_TRAIN_ON``
  does on a Ray cluster: seconds, checkpoint MB, whether the model that came back scores
  as the one trained.

The rows of every variant must equal ``one_by_one``'s (``rows_equal``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any


def _shard(dataset: str, users: list[int], steps: int, device: str) -> dict[str, Any]:
    """Explain one shard on ``device``; its rows (as a dict of lists), times and peak memory."""
    import torch

    from lcer_core import shards
    from lcer_core.datasets import load_prepared
    from lcer_core.devices import shard_device
    from lcer_core.models import load_model
    from lcer_core.runs import run_spec

    def explain(dev: torch.device) -> Any:  # the model and data are released on return
        data, model = load_prepared(dataset), load_model(dataset)
        spec = run_spec(dataset=dataset, method="lcer", k=5, seed=0, n_users=len(users),
                        model_key=model.key, steps=steps)  # fmt: skip
        frame = shards.explain_users(data, model, spec, users, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return frame

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    with shard_device() as dev:
        assert str(dev) == device, (dev, device)
        frame = explain(dev)
        peak = torch.cuda.max_memory_reserved() if cuda else 0
    end = time.time()
    keep = ["uid", "rank", "sid", "found", "ce_items", "sufficient", "necessary"]
    return {
        "rows": frame.select(keep).to_dict(as_series=False),
        "start": start,
        "end": end,
        "peak_gpu_mib": round(peak / 2**20),
        "left_reserved_mib": round(torch.cuda.memory_reserved() / 2**20) if cuda else 0,
    }


def _in_process(args: tuple[str, list[int], int, str]) -> dict[str, Any]:
    return _shard(*args)


def _train_bytes(dataset: str, epochs: int, device: str) -> tuple[bytes, float]:
    from lcer_core import models
    from lcer_core.datasets import load_prepared
    from lcer_core.recommender.multvae import MultVAEConfig

    start = time.time()
    model = models.fit_model(load_prepared(dataset), MultVAEConfig(epochs=epochs), device=device)
    return models.model_bytes(model), time.time() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--users", type=int, default=20, help="test users per shard")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the training on the GPU")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--allow-cpu", action="store_true", help="smoke-test on a CPU")
    args = ap.parse_args(argv)

    import torch

    from lcer_core.datasets import load_prepared
    from lcer_core.pairs import test_users

    # On a machine without CUDA (a smoke test of this script: --allow-cpu) everything is on the CPU.
    assert torch.cuda.is_available() or args.allow_cpu, "needs CUDA (or --allow-cpu)"
    dev = "cuda:0" if torch.cuda.is_available() else "cpu"
    users = test_users(load_prepared(args.dataset), 2 * args.users)
    halves = [users[: args.users], users[args.users :]]
    gpu = torch.cuda.get_device_name(0) if dev != "cpu" else None
    out: dict[str, Any] = {"dataset": args.dataset, "gpu": gpu}

    start = time.time()
    seq = [_shard(args.dataset, h, args.steps, dev) for h in halves]
    out["one_by_one"] = {"wall_s": round(time.time() - start, 2),
                         "peak_gpu_mib": [s["peak_gpu_mib"] for s in seq],
        "left_reserved_mib": [s["left_reserved_mib"] for s in seq]}  # fmt: skip
    print(json.dumps(out), file=sys.stderr)

    ctx = mp.get_context("spawn")
    start = time.time()
    with ctx.Pool(2) as pool:
        par = pool.map(_in_process, [(args.dataset, h, args.steps, dev) for h in halves])
    out["side_by_side"] = {
        "wall_s": round(time.time() - start, 2),
        "peak_gpu_mib": [s["peak_gpu_mib"] for s in par],
        "overlapped": max(s["start"] for s in par) < min(s["end"] for s in par),
        "rows_equal": [s["rows"] for s in par] == [s["rows"] for s in seq],
    }
    print(json.dumps(out["side_by_side"]), file=sys.stderr)

    try:
        import ray
    except ImportError:
        out["ray_half_gpu"] = "ray not installed"
    else:
        # no token file written to ~/.ray (Ray's default for a new local cluster)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_gpus=1, num_cpus=2, include_dashboard=False, logging_level="ERROR")

        @ray.remote(num_gpus=0.5, max_calls=0)
        def half(h: list[int]) -> dict[str, Any]:
            ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            return {**_shard(args.dataset, h, args.steps, dev), "gpu_ids": ids,
                    "pid": os.getpid()}  # fmt: skip

        start = time.time()
        first = ray.get([half.remote(h) for h in halves])
        again = ray.get([half.remote(h) for h in halves])  # long-lived workers: same pids
        out["ray_half_gpu"] = {
            "wall_s_two_rounds": round(time.time() - start, 2),
            "gpu_ids": [r["gpu_ids"] for r in first],
            "overlapped": max(r["start"] for r in first) < min(r["end"] for r in first),
            "workers_reused": {r["pid"] for r in again} <= {r["pid"] for r in first},
            "left_reserved_mib": [r["left_reserved_mib"] for r in again],
            "rows_equal": [r["rows"] for r in first] == [s["rows"] for s in seq],
        }
        ray.shutdown()
        print(json.dumps(out["ray_half_gpu"]), file=sys.stderr)

    from lcer_core import models

    with ctx.Pool(1) as pool:
        blob, train_s = pool.apply(_train_bytes, (args.dataset, args.epochs, dev))
    back = models.model_from_bytes(blob, args.dataset, "from-gpu-worker")
    out["train_on_gpu"] = {
        "epochs": args.epochs,
        "train_s": round(train_s, 2),
        "checkpoint_mb": round(len(blob) / 1e6, 1),
        "metrics": back.metrics,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
