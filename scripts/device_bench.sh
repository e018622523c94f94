#!/usr/bin/env bash
# GPU check of the explanation engine, for the `device` tool (one H100/H200, no network there):
# the CUDA tests, then `lcer bench` on CUDA twice.
#
# Prepare here, once (nothing of it is committed):
#   echo /.whl/ >> .git/info/exclude; echo /.device-data/ >> .git/info/exclude
#   mkdir -p .device-data && cp ../shared/datasets/ml-100k.zip .device-data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl polars==2.1.0 polars-runtime-32==2.1.0
#   (the image there has torch, httpx, rich, typer; DuckDB is not needed: the science core
#   imports it lazily, and polars + DuckDB together would pass the 64 MiB the tool carries)
# Then run (about 3 minutes with the machine's start; give timeout_s=420 to leave room for one rerun):
#   run(command="bash scripts/device_bench.sh", carry=[".whl", ".device-data"], timeout_s=420)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export LCER_HOME=/tmp/lcer-home LCER_MIRROR="file://$PWD/.device-data"
nvidia-smi --query-gpu=name,memory.total --format=csv
# The tests that run every explainer on CUDA and compare with the CPU (skipped where there is
# no GPU), and the noise tests (the same draws on every device).
python3 -m pytest -q -p no:cacheprovider tests/test_baselines.py tests/test_noise.py -k "device or noise" \
  2>&1 | tee "${OUT:-/tmp}/pytest-cuda.txt" | tail -5
[ "${1:-}" = tests ] && exit 0  # `bash scripts/device_bench.sh tests`: the tests alone
python3 - <<'PY'
import json, os, sys
from lcer_core.bench import run_benchmark
out = os.environ.get("OUT", "/tmp")
log = lambda m: print(m, file=sys.stderr)  # noqa: E731
# Twice on the same warm machine (the second run is the one to quote: CUDA kernels loaded);
# early stop as on the CPU (patience 500, min delta 0.005, docs/results.md).
for run in (1, 2):
    res = run_benchmark(device="cuda", sample=5 if run == 1 else 3, patience=500,
                        min_delta=0.005, log=log)
    print(json.dumps(res, indent=2, default=str))
    with open(os.path.join(out, f"bench-cuda-{run}.json"), "w") as f:
        json.dump(res, f, indent=2, default=str)
PY
