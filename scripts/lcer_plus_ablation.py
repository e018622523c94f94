"""lcer-plus, one step at a time: each variant's Val, Len, PS, PN, F_NS, calls and seconds per pair.

The optimisation is run once per K (it does not depend on the steps after it) and every
variant selects from its pool, so the numbers differ only by the step switched on.
usage: LCER_HOME=... python scripts/lcer_plus_ablation.py MODEL_KEY USERS [K ...]
"""

from __future__ import annotations

import sys
import time

import torch

from lcer_core import api
from lcer_core.explainers import LCERPlus, LCERPlusConfig
from lcer_core.explainers.lcer import _pair_keys
from lcer_core.explainers.lcer_plus import _Pool, _Selector
from lcer_core.metrics import evaluate_pairs, summarize

STEPS = [
    ("lcer (threshold, best sampled set)", dict(select="threshold", candidates=1, prefix=False)),
    ("+ top-K test", dict(candidates=1, prefix=False)),
    ("+ pool of 8 sampled sets", dict(prefix=False)),
    ("+ importance prefix", dict()),
    ("+ sufficiency-aware (4)", dict(sufficiency=4.0)),
    ("+ pruning", dict(sufficiency=4.0, prune=True)),
    ("+ fallback = lcer-plus", dict(sufficiency=4.0, prune=True, fallback=True)),
    ("lcer-plus, sufficiency 2", dict(sufficiency=2.0, prune=True, fallback=True)),
    ("lcer-plus, sufficiency 8", dict(sufficiency=8.0, prune=True, fallback=True)),
    ("lcer-plus without pruning", dict(sufficiency=4.0, fallback=True)),
]
OFF = dict(prefix=True, prune=False, sufficiency=0.0, fallback=False)


def main() -> None:
    key, n_users, ks = sys.argv[1], int(sys.argv[2]), [int(k) for k in sys.argv[3:]] or [5, 10]
    torch.set_num_threads(1)
    data, model = api.load_dataset("ml-100k"), api.load_model("ml-100k", key)
    rec = model.recommender()
    seed = model.seed  # the explainer's seed is the model's (lcer run --seeds)
    print("| K | variant | Val | Len | PS | PN | F_NS | calls/pair | s/pair |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in ks:
        pairs = api.make_pairs(rec, data, users=n_users, k=k)
        cfg = LCERPlusConfig()
        plus = LCERPlus(cfg)
        t0 = time.perf_counter()
        order = torch.argsort(pairs.lengths, stable=True)
        sub = pairs.select(order)
        sets, scores, imp = plus._optimise(rec, sub, _pair_keys(pairs)[order], seed, lambda d: None)
        pool = _Pool.gather(
            [(order, (sets, scores, imp))],
            len(pairs),
            pairs.items.shape[1],
            cfg.candidates,
            pairs.items.device,
        )
        t_opt = time.perf_counter() - t0
        loss = (cfg.alpha + pool.scores - pairs.thresholds[:, None]).clamp_min(0)
        loss = loss + cfg.lam * pool.sets.sum(2)
        best = loss.argmin(1)
        rows = torch.arange(len(pairs))
        for name, kw in STEPS:
            c = LCERPlusConfig(**{**OFF, **kw})
            s, sc = pool.sets & pairs.mask[:, None], pool.scores
            if c.candidates == 1:
                s, sc = s[rows, best][:, None], sc[rows, best][:, None]
            t1 = time.perf_counter()
            calls = torch.full((len(pairs),), cfg.steps, dtype=torch.long)
            out = _Selector(rec, pairs, c, calls).run(s, sc, pool.importance)
            dt = t_opt + time.perf_counter() - t1
            m = summarize(evaluate_pairs(rec, pairs, out))
            print(
                f"| {k} | {name} | {m['val_pct']:.1f} | {m['len']:.2f} | {m['ps_pct']:.1f} | "
                f"{m['pn_pct']:.1f} | {m['fns_pct']:.1f} | {float(calls.float().mean()):.0f} | "
                f"{dt / len(pairs):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
