#!/usr/bin/env bash
# Every GPU check in one go, for a machine with CUDA: at most about 9.5 minutes (each step has a time limit, 555 s
# in all), nothing downloaded (digits come with scikit-learn, the benchmark generates CIFAR-shaped data). Every
# line printed names the device:
#   1. the tests skipped without CUDA (pytest -m gpu): runs on cuda in float32 and bfloat16, CPU vs CUDA, the
#      CUDA memory meter, and whatever else is marked gpu;
#   2. the client memory modes measured on CUDA (hosfl-sim memory --device cuda);
#   3. short HO-SFL runs with runtime.device=cuda through the CLI: local backend, Ray backend with fractional
#      worker_num_gpus / server_num_gpus, and a sweep with gpus_per_run 0.5 (bench/gpu_runs.py);
#   4. the GPU benchmarks (python -m bench.fused_round, where present).
# Without CUDA it says so and exits 0. Exit status: 1 when any step failed.
#   bash bench/gpu_check.sh [--skip-bench]   # PY=/path/to/python: another interpreter (default: .venv, else python3)
# `make bench` runs bench.fused_round itself, then this with --skip-bench.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_worker_maximum_startup_concurrency=4
DEVICE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")') || DEVICE=""
if [ -z "$DEVICE" ]; then
    why=$("$PY" -c 'from hosfl_sim.runtime.device import cuda_missing; print(cuda_missing())' 2>/dev/null)
    echo "GPU checks: skipped: no CUDA (${why:-torch not importable})"
    exit 0
fi
WORK=$(mktemp -d -t gpu-check-XXXXXX)
FAILED=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, prefix its lines with the device, record failures
    local name=$1 limit=$2
    shift 2
    echo "== [$DEVICE] $name"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | while IFS= read -r line; do printf '[%s] %s\n' "$DEVICE" "$line"; done
    local rc=${PIPESTATUS[0]}
    echo "== [$DEVICE] $name: exit $rc, $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc)")
}
"$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

step "GPU tests (pytest -m gpu)" 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step "memory modes on CUDA" 45 "$PY" -m hosfl_sim.cli memory quickstart --device cuda --out "$WORK/memory"
step "HO-SFL runs on cuda (CLI, Ray, sweep)" 120 "$PY" -m bench.gpu_runs --rounds 20 --out "$WORK/runs"
if [ "${1:-}" != "--skip-bench" ] && [ -f bench/fused_round.py ]; then  # its lines print as each part ends
    step "GPU benchmarks (bench.fused_round)" 240 "$PY" -m bench.fused_round
fi

rm -rf "$WORK"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf '[%s] GPU checks failed: %s\n' "$DEVICE" "${FAILED[*]}"
    exit 1
fi
echo "[$DEVICE] GPU checks: all passed"
