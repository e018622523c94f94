"""Per-stage wall time and peak memory of the pipeline on one dataset (issue 17, item 4).

    python scripts/scale_bench.py ml-100k               # the real ML 100K
    python scripts/scale_bench.py epinions --synth      # lcer synth epinions, prepared as syn-epinions
    options: --epochs E (training epochs, default 2) --users N (test users, 100) --steps S (LCER, 3000)
             --methods lcer,fia,accent,kaffes --ks 5,10 --device cpu|cuda --json OUT

Stages run in this one process through the core (``lcer_core.models``, ``pairs``, ``explainers``: what the Prefect tasks
call): synth, prepare, train (seconds per epoch), pairs (top-K for the test users),
explain + evaluate per method and K (LCER's seconds per pair). The peak is the process's
resident memory sampled every 10 ms during the stage (it includes what earlier stages
left allocated); on CUDA the stage's peak GPU memory too. Store and track are measured by ``lcer run`` on the same data
(``scripts/scale_run.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    """This process's resident memory in bytes (Linux; no dependency: the GPU image lacks psutil)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


class Peak:
    """Largest RSS of this process between start() and stop(), sampled in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def start(self) -> None:
        self.peak = _rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, _rss())
        return self.peak


ROWS: list[dict[str, Any]] = []


def _cuda() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


@contextmanager
def stage(name: str, **extra: Any) -> Iterator[dict[str, Any]]:
    peak = Peak()
    peak.start()
    row: dict[str, Any] = {"stage": name, **extra}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield row
    finally:
        row["wall_s"] = round(time.perf_counter() - t0, 3)
        # CPU seconds of this process (all threads): on a machine shared with other jobs the
        # wall time measures the others too; this does not (much).
        row["cpu_s"] = round(time.process_time() - c0, 3)
        row["peak_rss_mib"] = round(peak.stop() / 2**20, 1)
        if _cuda():
            import torch

            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
        ROWS.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--synth", action="store_true", help="use `lcer synth DATASET` data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--train-batches",
        type=int,
        default=0,
        help="time this many training batches and extrapolate to an epoch (instead of --epochs)",
    )
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--methods", default="lcer,fia,accent,kaffes")
    ap.add_argument("--ks", default="5,10")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--reuse", action="store_true", help="keep prepared data and the latest model if present"
    )
    ap.add_argument("--no-explain", action="store_true", help="stop after training")
    ap.add_argument("--retrain", action="store_true", help="with --reuse: train all the same")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from lcer_core import api, models
    from lcer_core.datasets import is_prepared, load_prepared, prepare_dataset
    from lcer_core.datasets.custom import register_and_prepare
    from lcer_core.datasets.synth import write_synth
    from lcer_core.devices import resolve_device
    from lcer_core.explainers import LCERConfig
    from lcer_core.metrics import evaluate_pairs, summarize
    from lcer_core.pairs import make_pairs, test_users
    from lcer_core.recommender.multvae import MultVAEConfig

    dev = resolve_device(args.device)
    name = args.dataset
    if args.synth:
        name = f"syn-{args.dataset}"
    if args.reuse and is_prepared(name):
        pass
    elif args.synth:
        out = Path(tempfile.mkdtemp(prefix="lcer-synth-")) / f"{args.dataset}.parquet"
        with stage("synth", rows=None) as row:
            row["rows"] = write_synth(args.dataset, out, seed=args.seed).height
        with stage("prepare") as row:
            res = register_and_prepare(
                name, out, user_col="user", item_col="item", rating_col="rating", force=True
            )
            row |= {k: res.stats[k] for k in ("users", "items", "interactions")}
    else:
        with stage("prepare") as row:
            res = prepare_dataset(name, force=True)
            row |= {k: res.stats[k] for k in ("users", "items", "interactions")}
    data = load_prepared(name)

    epoch_times: list[float] = []
    last = [time.perf_counter()]

    def on_epoch(_: Any) -> None:
        now = time.perf_counter()
        epoch_times.append(now - last[0])
        last[0] = now

    model = models.find_model(name) if args.reuse and not args.retrain else None
    if model is not None:
        pass
    elif args.train_batches:
        with stage("train", batches=args.train_batches, items=data.n_items) as row:
            model = _time_batches(models, data, args.train_batches, dev, row)
    else:
        with stage("train", epochs=args.epochs, items=data.n_items) as row:
            last[0] = time.perf_counter()
            model = models.train_model(
                data, MultVAEConfig(epochs=args.epochs), device=dev, on_epoch=on_epoch
            )
            row["s_per_epoch"] = round(min(epoch_times), 2)
            row["epoch_s"] = [round(t, 2) for t in epoch_times]
            row["s_for_200_epochs"] = round(200 * min(epoch_times))
    if args.no_explain:
        return _finish(args, {"dataset": name, "items": data.n_items, "device": str(dev)})
    rec = model.recommender(dev)
    users = test_users(data, args.users)
    params = LCERConfig.defaults_for(args.dataset)  # syn-epinions: Epinions' α and λ
    summary: dict[str, Any] = {"dataset": name, "items": data.n_items, "device": str(dev)}
    for k in (int(x) for x in args.ks.split(",")):
        with stage("pairs", k=k) as row:
            pairs = make_pairs(rec, data, users, k)
            row["pairs"] = len(pairs)
            row["mean_history"] = round(float(pairs.lengths.float().mean()), 1)
        for method in args.methods.split(","):
            extra: dict[str, Any] = (
                dict(params, steps=args.steps) if method.startswith("lcer") else {}
            )
            with stage("explain", method=method, k=k) as row:
                expl = api.explain(rec, pairs, method, **extra)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            row["s_per_pair"] = round(row["wall_s"] / len(pairs), 5)
            row["cpu_s_per_pair"] = round(row["cpu_s"] / len(pairs), 5)
            with stage("evaluate", method=method, k=k) as row:
                row |= summarize(evaluate_pairs(rec, pairs, expl))
    return _finish(args, summary)


def _finish(args: argparse.Namespace, summary: dict[str, Any]) -> dict[str, Any]:
    summary["stages"] = ROWS
    summary["peak_rss_mib"] = max((r["peak_rss_mib"] for r in ROWS), default=None)
    summary["cpu_count"] = os.cpu_count()
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _time_batches(models: Any, data: Any, n_batches: int, dev: Any, row: dict[str, Any]) -> Any:
    """Train on ``n_batches`` batches exactly as ``fit_multvae`` does (sparse rows, one dense
    batch); seconds per batch after the first, times batches per epoch; save that model."""
    import torch

    from lcer_core.recommender.multvae import MultVAE, MultVAEConfig

    cfg = MultVAEConfig(epochs=1)
    train = data.rows("train", data.users_of("train"))
    torch.manual_seed(models.MODEL_SEED)
    module = MultVAE(train.shape[1], cfg).to(dev)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    order = torch.randperm(train.shape[0])
    per_epoch = -(-train.shape[0] // cfg.batch_size)
    times, cpu = [], []
    module.train()
    for b in range(min(n_batches, per_epoch)):
        t0, c0 = time.perf_counter(), time.process_time()
        x = train[order[b * cfg.batch_size : (b + 1) * cfg.batch_size]].to(dev)
        loss = module.loss(x, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    s_batch = sorted(times[1:] or times)[len(times[1:] or times) // 2]  # median, warm
    c_batch = sorted(cpu[1:] or cpu)[len(cpu[1:] or cpu) // 2]
    row |= {
        "batches_per_epoch": per_epoch,
        "s_per_batch": round(s_batch, 3),
        "s_per_epoch": round(s_batch * per_epoch, 1),
        "s_for_200_epochs": round(200 * s_batch * per_epoch),
        "cpu_s_per_batch": round(c_batch, 3),
        "cpu_s_per_epoch": round(c_batch * per_epoch, 1),
        "extrapolated": True,
    }
    key = models.model_key(data, cfg, models.MODEL_SEED)
    model = models.TrainedModel(
        data.name, key, cfg, models.MODEL_SEED, module.cpu().eval(), {}, Path("."), data.fingerprint
    )
    return models.save_model(model, data)


def _print(summary: dict[str, Any], out: Callable[[str], None] = print) -> None:
    for r in summary["stages"]:
        label = r["stage"] + "".join(f" {r[k]}" for k in ("method", "k") if k in r)
        note = ""
        if "s_per_epoch" in r:
            note = f"  {r['s_per_epoch']} s/epoch"
        if r["stage"] == "explain":
            note = f"  {r['s_per_pair']} s/pair"
        out(f"{label:<22} {r['wall_s']:>9.2f} s  {r['peak_rss_mib']:>8.0f} MiB{note}")


if __name__ == "__main__":
    _print(main())
