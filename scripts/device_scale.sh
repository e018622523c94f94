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
# Then run in two calls (each well under the 10 minutes a command may take; the second reuses
# the first's trained model, as long as the machine stays warm between them):
#   run(command="bash scripts/device_scale.sh train", carry=[".whl", ".device-data"], timeout_s=540)
#   run(command="bash scripts/device_scale.sh bench", carry=[".whl", ".device-data"], timeout_s=420)
# `bash scripts/device_scale.sh quick` is a 3-epoch, 300-step smoke run of the first part.
# Results land in $OUT: scale-epinions.json (per stage), bench-*.json, the logs.
set -euo pipefail
part=${1:-train}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export LCER_HOME=/tmp/lcer-home LCER_MIRROR="file://$PWD/.device-data"
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total --format=csv
case "$part" in
  train | quick)
    epochs=200 steps=3000
    [ "$part" = quick ] && epochs=3 steps=300
    # Synth + prepare + train + pairs + explain (4 methods x K=5,10, 100 users) + evaluate.
    python3 scripts/scale_bench.py epinions --synth --epochs "$epochs" --steps "$steps" \
      --device cuda --json "$out/scale-epinions.json" 2>&1 | tee "$out/scale-epinions.log" | tail -30
    ;;
  bench)
    python3 - <<'PY'
import json, os, sys
from lcer_core.bench import run_benchmark
out = os.environ.get("OUT", "/tmp")
log = lambda m: print(m, file=sys.stderr)  # noqa: E731
# LCER at Epinions' shape (the model trained by `train` above) and at ML 100K, same settings:
# the floor is seconds per pair at Epinions <= 2x those at ML 100K.
for name in ("syn-epinions", "ml-100k"):
    res = run_benchmark(dataset=name, device="cuda", sample=2, n_users=100, log=log)
    print(json.dumps({k: res[k] for k in ("batched_s_per_pair", "sequential_s_per_pair", "pairs",
                                         "steps", "device", "peak_rss_mb") if k in res}))
    with open(os.path.join(out, f"bench-{name}.json"), "w") as f:
        json.dump(res, f, indent=2, default=str)
PY
    ;;
  *) echo "usage: $0 [train|quick|bench]" >&2; exit 2 ;;
esac
