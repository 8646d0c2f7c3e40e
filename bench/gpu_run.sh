#!/usr/bin/env bash
# The GPU machine's one command: bench/gpu_check.py (the CUDA path of the method layer), then
# bench/gpu_platform.py (the platform itself: Ray Tune, Optuna, ASHA, MLflow on the GPU). At most
# about 6 minutes: the wheelhouse install, then gpu_check.py's parts within 165 s (the
# figures the targets need come first; compile, the slowest, last) and gpu_platform.py within 195 s.
#
#   bash bench/gpu_run.sh        # from the project root, with .whl/ beside it; writes under $OUT
#
# .whl/ holds what the GPU machine lacks (Ray, Optuna, MLflow's client and sqlite store) as Python 3.12
# wheels, downloaded ahead of time where the package index is reachable; it is installed into /tmp/site. Without $OUT the files go to
# results/gpu_run/. What comes back: gpu_run.log (both scripts' output), gpu_check.json and, under
# platform/, gpu_platform.json, gpu_platform.log and the two study files; the studies' own results
# stay on the machine in /tmp/gpu_platform. Exit status 0 only when both scripts pass.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_run}
mkdir -p "$OUT"
log="$OUT/gpu_run.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 \
    | tee "$log" || { echo "installing .whl/ failed" | tee -a "$log"; exit 3; }
export PYTHONPATH="/tmp/site:$PWD" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
timeout -k 10 185 python3 bench/gpu_check.py --budget 165 --out "$OUT/gpu_check.json" 2>&1 | tee -a "$log"
check=${PIPESTATUS[0]}
timeout -k 15 195 python3 bench/gpu_platform.py --out "$OUT/platform" --work /tmp/gpu_platform 2>&1 | tee -a "$log"
platform=${PIPESTATUS[0]}
echo "gpu_check.py exit $check; gpu_platform.py exit $platform" | tee -a "$log"
[ "$check" -eq 0 ] && [ "$platform" -eq 0 ]
