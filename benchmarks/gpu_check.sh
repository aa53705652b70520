#!/usr/bin/env bash
# GPU checks for the monitor, as one short script (about 6 minutes on one H100/H200; EXTRA=1 adds ~3):
#   1. the CUDA tests: accumulation on the device against the float64 CPU reference, the Trainer tests,
#      and the monitor's step path under torch.cuda.set_sync_debug_mode (no synchronising call);
#   2. the monitor's overhead on ResNet-50 Barlow Twins, projector 8192, 96 px, batch 256, bf16:
#      a. GPU-bound: views resident on the device, no host data path (goal: median pair ratio <= 1.01);
#      b. host-bound: a host DataLoader builds each batch (measures the host data path more than the monitor);
#   3. the spectrum at d = 2048 / 8192 (window 1024): device time of the Gram route, host eigensolve,
#      naive d x d eigvalsh for contrast, accuracy against the float64 d x d reference;
#   4. with EXTRA=1: the overhead of the demo model and of ResNet-18 / 2048 at 32 px, both data modes.
# Everything goes to $OUT/gpu_check.log (one file per step beside it). Tune with ROUNDS (resident pairs,
# default 6), HOST_ROUNDS (default 3) and STEPS (default 110, of which the first 10 are not timed).
# On a machine without the package's dependencies installed, carry Lightly as a wheel in .whl/.
set -uo pipefail  # a failing step is reported in the log; the later steps still run
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu-check}"; mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"; : > "$LOG"
STEPS="${STEPS:-110}"; ROUNDS="${ROUNDS:-6}"; HOST_ROUNDS="${HOST_ROUNDS:-3}"
TABLE='^\||^machine|^model|^resident|^host|^  '
step() { echo; echo "== $1 ($(date +%T))"; } >> "$LOG"

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, lightning, torchmetrics; print('torch', torch.__version__, 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__)"
} 2>&1 | tee "$OUT/gpu.txt" >> "$LOG"

step "CUDA tests"
python3 -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/test_spectrum.py tests/test_monitor.py \
  tests/test_sync_free.py tests/test_sync_counter_filter.py 2>&1 | tail -15 | tee "$OUT/tests.txt" >> "$LOG"

RESNET50=(--device cuda --arch resnet50 --dim 8192 --batch-size 256 --image-size 96 --steps "$STEPS")
step "overhead, ResNet-50/8192, GPU-bound (views resident on the device; goal: median pair ratio <= 1.01)"
python3 benchmarks/overhead.py "${RESNET50[@]}" --data resident --rounds "$ROUNDS" > "$OUT/overhead_resnet50_resident.txt" 2>&1
grep -E "$TABLE" "$OUT/overhead_resnet50_resident.txt" >> "$LOG" || tail -20 "$OUT/overhead_resnet50_resident.txt" >> "$LOG"
python3 - "$OUT/overhead_resnet50_resident.txt" >> "$LOG" 2>&1 <<'EOF'
import sys
rows = [line.split("|") for line in open(sys.argv[1]) if line.startswith("| resident")]
ratio = float(rows[0][4]) if rows else float("nan")
print(f"GPU-bound ResNet-50/8192 median pair ratio {ratio:.4f}: {'PASS' if ratio <= 1.01 else 'FAIL'} (goal <= 1.01)")
EOF

step "overhead, ResNet-50/8192, host-bound (host DataLoader)"
python3 benchmarks/overhead.py "${RESNET50[@]}" --data host --rounds "$HOST_ROUNDS" > "$OUT/overhead_resnet50_host.txt" 2>&1
grep -E "$TABLE" "$OUT/overhead_resnet50_host.txt" >> "$LOG" || tail -20 "$OUT/overhead_resnet50_host.txt" >> "$LOG"

step "spectrum cost"
python3 benchmarks/spectrum_cost.py --device cuda --naive > "$OUT/spectrum_cost.txt" 2>&1
grep -E '^\||^machine|^[A-Za-z]' "$OUT/spectrum_cost.txt" | tail -20 >> "$LOG"

if [ "${EXTRA:-0}" = 1 ]; then
  step "overhead, demo model, both modes"
  python3 benchmarks/overhead.py --device cuda --steps "$STEPS" --rounds "$HOST_ROUNDS" > "$OUT/overhead_demo.txt" 2>&1
  grep -E "$TABLE" "$OUT/overhead_demo.txt" >> "$LOG"
  step "overhead, ResNet-18/2048 at 32 px, both modes"
  python3 benchmarks/overhead.py --device cuda --arch resnet18 --dim 2048 --batch-size 256 --image-size 32 \
    --steps "$STEPS" --rounds "$HOST_ROUNDS" > "$OUT/overhead_resnet18.txt" 2>&1
  grep -E "$TABLE" "$OUT/overhead_resnet18.txt" >> "$LOG"
fi
step "done"
cat "$LOG"
