#!/usr/bin/env bash
# Build the sdist and the wheel, install the wheel into a fresh virtual environment that reuses the torch,
# Lightning and Lightly already installed beside PYTHON (no second torch install), and use it as a user would:
# import it, `lightning-stepwise --version`, a 20-step monitored fit.
#   bash scripts/check_wheel.sh [PYTHON]        (default .venv/bin/python; `make test` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PYTHON=${1:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "check_wheel: building the sdist and the wheel"
"$PYTHON" -m build --no-isolation --sdist --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/*.whl)
"$PYTHON" -c 'import sys, zipfile; sys.exit("lightning_stepwise/py.typed" not in zipfile.ZipFile(sys.argv[1]).namelist())' \
  "$wheel" || { echo "check_wheel: py.typed missing from $wheel"; exit 1; }
ls "$work"/dist/*.tar.gz > /dev/null

echo "check_wheel: installing $(basename "$wheel") into a fresh environment"
"$PYTHON" -m venv --without-pip "$work/venv"
fresh="$work/venv/bin/python"
shared=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own=$("$fresh" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$shared" > "$own/shared-torch.pth"  # torch, Lightning, Lightly: the ones already installed
# pip from the shared environment installs into the fresh one; --no-deps, then `pip check`: every requirement
# of the wheel is met by what is installed, and nothing is installed twice
"$fresh" -m pip install --quiet --no-deps --force-reinstall --no-warn-script-location "$wheel"
"$fresh" -m pip check > "$work/check.log" 2>&1 || { grep -i "lightning-stepwise" "$work/check.log" && exit 1 || true; }
cd "$work"  # not the clone: its lightning_stepwise/ folder would shadow the installed wheel
"$fresh" - "$own" "$shared" <<'PY'
import sys
import lightning_stepwise
import torch
own, shared = sys.argv[1], sys.argv[2]
assert lightning_stepwise.__file__.startswith(own), f"imported {lightning_stepwise.__file__}, not the wheel"
assert torch.__file__.startswith(shared), f"torch from {torch.__file__}: expected the shared one"
print(f"check_wheel: lightning_stepwise {lightning_stepwise.__version__} from the wheel, torch {torch.__version__} "
      "reused")
PY
"$work/venv/bin/lightning-stepwise" --version
"$fresh" "$repo/scripts/fit_smoke.py"
echo "check_wheel: OK"
