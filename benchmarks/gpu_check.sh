#!/usr/bin/env bash
# GPU checks for the monitor, as one short script (a few minutes on one H100/H200):
#   1. the CUDA tests: accumulation on the device against the float64 CPU reference, the Trainer tests,
#      and the monitor's step path under torch.cuda.set_sync_debug_mode (no synchronising call);
#   2. the spectrum at d = 2048 / 8192 (window 1024): device time of the Gram route, host eigensolve,
#      naive d x d eigvalsh for contrast, accuracy against the float64 d x d reference;
#   3. the overhead table on the GPU (bf16 autocast): the demo model, then ResNet-18 and ResNet-50.
# On a machine without the package's dependencies installed, carry Lightly as a wheel in .whl/.
set -uo pipefail  # a failing step is reported in its file; the later tables still run
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu-check}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning, torchmetrics; print('torch', torch.__version__, 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/test_spectrum.py tests/test_monitor.py \
  tests/test_sync_free.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
python3 benchmarks/spectrum_cost.py --device cuda --naive 2>&1 | tee "$OUT/spectrum_cost.txt"
python3 benchmarks/overhead.py --device cuda --steps "${STEPS:-200}" --rounds "${ROUNDS:-5}" 2>&1 \
  | grep -E '^\||^machine|^model|^per round' | tee "$OUT/overhead_gpu.txt"
# 3. issue 6's tables: ResNet-18 / 2048 at 32 px and ResNet-50 / 8192 at 96 px, batch 256, random images
#    in memory, with the monitor's extra peak GPU memory.
python3 benchmarks/overhead.py --device cuda --arch resnet18 --dim 2048 --batch-size 256 --image-size 32 \
  --steps "${STEPS:-100}" --rounds "${ROUNDS:-3}" 2>&1 | grep -E '^\||^machine|^model|^peak|^per round' \
  | tee "$OUT/overhead_resnet18.txt"
python3 benchmarks/overhead.py --device cuda --arch resnet50 --dim 8192 --batch-size 256 --image-size 96 \
  --steps "${STEPS:-100}" --rounds "${ROUNDS:-3}" 2>&1 | grep -E '^\||^machine|^model|^peak|^per round' \
  | tee "$OUT/overhead_resnet50.txt"
