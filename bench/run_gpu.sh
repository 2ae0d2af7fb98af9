#!/usr/bin/env bash
# bench/gpu.py on a bare GPU machine, as one command: install the carried wheels (bench/wheels.sh) without a network,
# print the GPU, then run the bench under a time limit and a budget that leave the lease room for a second try.
#
#     bench/run_gpu.sh OUT_DIR [bench/gpu.py options]     # -> OUT_DIR/gpu.json (rewritten after every section),
#                                                         #    OUT_DIR/gpu.log
# BENCH_TIMEOUT_S (default 500) bounds the whole run (SIGTERM, then KILL 20 s later: the JSON keeps every finished
# section); BENCH_BUDGET_S (default 420) makes the bench skip sections that would not finish in time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/run_gpu.sh OUT_DIR [bench/gpu.py options]}
shift
mkdir -p "$out"
site=$(mktemp -d)
if compgen -G "bench/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" bench/wheels/*.whl || exit 1
fi
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout -k 20 "${BENCH_TIMEOUT_S:-500}" python3 bench/gpu.py --budget-s "${BENCH_BUDGET_S:-420}" \
    --out "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log"
exit "${PIPESTATUS[0]}"
