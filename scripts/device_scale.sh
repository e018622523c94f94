#!/usr/bin/env bash
# GPU run of the pipeline at Epinions' shape (issue 17, item 5), for the `device` tool (one
# H100/H200, no network there): `lcer synth epinions`, prepare, Mult-VAE with 200 epochs,
# 100 test users explained by the four methods at K = 5 and 10, evaluated (per stage: wall
# time, peak RSS and GPU memory); then the LCER benchmark on that data and on ML 100K.
# NOT RUN YET: no GPU was lent to the session that wrote it.
#
# Prepare here, once, as for scripts/device_bench.sh (nothing of it is committed):
#   echo /.whl/ >> .git/info/exclude; echo /.device-data/ >> .git/info/exclude
#   mkdir -p .device-data && cp ../shared/datasets/ml-100k.zip .device-data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl polars==2.1.0 polars-runtime-32==2.1.0
# Then run in two calls (each under the 10 minutes a command may take; the second reuses the
# first's prepared data and model, as long as the machine stays warm between them: the
# device tool keeps it about 30 s idle, so issue the second call at once):
#   run(command="bash scripts/device_scale.sh train", carry=[".whl", ".device-data"], timeout_s=570)
#   run(command="bash scripts/device_scale.sh explain", carry=[".whl", ".device-data"], timeout_s=570)
# `bash scripts/device_scale.sh quick` is a 3-epoch, 300-step smoke run of both parts in one call.
# Issue 26, item 4 (after `train`, same warm machine): `bash scripts/device_scale.sh share`
# puts two LCER shards on one GPU (one after the other, side by side in two processes, and as
# Ray tasks of num_gpus=0.5 in long-lived workers when Ray is installed there: wall times,
# peak GPU memory per shard, the memory a shard leaves behind, rows equal) and trains
# Mult-VAE in another process on the GPU, its checkpoint sent back as bytes
# (scripts/gpu_share_bench.py; result in $OUT/share.json). `quick` runs a small share too.
# Results land in $OUT: scale-*.json (per stage: wall time, peak RSS and GPU memory), bench-*.json.
# Estimate (not measured): 12.8 TFLOP per Mult-VAE epoch at this shape (37 batches of 500 users,
# dense 115,798-item input and output layers), a few seconds per epoch on an H100/H200.
set -euo pipefail
part=${1:-train}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export LCER_HOME=/tmp/lcer-home LCER_MIRROR="file://$PWD/.device-data"
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total --format=csv
bench() {  # LCER at Epinions' shape (the model trained above) and at ML 100K, same settings
  python3 - <<'PY'
import json, os, sys
from lcer_core.bench import run_benchmark
out = os.environ.get("OUT", "/tmp")
log = lambda m: print(m, file=sys.stderr)  # noqa: E731
# Floor: LCER's seconds per pair at Epinions' shape <= 2x those at ML 100K.
for name in ("syn-epinions", "ml-100k"):
    res = run_benchmark(dataset=name, device="cuda", sample=2, n_users=100, log=log)
    print(json.dumps({k: res.get(k) for k in ("batched_s_per_pair", "sequential_s_per_pair",
                                             "pairs", "steps", "device", "peak_rss_mb")}))
    with open(os.path.join(out, f"bench-{name}.json"), "w") as f:
        json.dump(res, f, indent=2, default=str)
PY
}
scale() { python3 scripts/scale_bench.py epinions --synth --device cuda "$@" 2>&1 | tail -40; }
case "$part" in
  train) scale --epochs 200 --no-explain --json "$out/scale-train.json" ;;
  explain)
    scale --reuse --json "$out/scale-explain.json"  # 4 methods x K=5,10, 100 users, evaluate
    bench
    ;;
  share) python3 scripts/gpu_share_bench.py syn-epinions --users 20 --steps 3000 --epochs 3 \
           --json "$out/share.json" ;;
  quick)
    scale --epochs 3 --steps 300 --json "$out/scale-quick.json"
    python3 scripts/gpu_share_bench.py syn-epinions --users 5 --steps 300 --epochs 1 \
      --json "$out/share-quick.json"
    ;;
  *) echo "usage: $0 [train|explain|share|quick]" >&2; exit 2 ;;
esac
