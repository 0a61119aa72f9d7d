#!/usr/bin/env bash
# Create .venv-lerobot: LeRobot's real dataset API (lerobot 0.4.4) beside procvlm_ros, for the
# LeRobot tests of procvlm-label and `procvlm-label run --write-dataset`. A venv of its own:
# lerobot needs torchvision (+ torchcodec for video), which do not load beside the main venv's
# CPU torch 2.13.0. Pins and the lerobot pins relaxed: requirements/lerobot/requirements.txt.
# Idempotent: a stamp file keyed on the inputs skips work that is already done.
# About 5.6 GB (torch 2.14.1 is a CUDA build, run on the CPU here); ~3 min on a new x86_64
# machine with the wheels on disk.
#
# Usage: scripts/setup_lerobot_venv.sh [VENV_DIR]        (env: PYTHON=python3.11)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
V=$(realpath -m "${1:-$ROOT/.venv-lerobot}")
PYTHON=${PYTHON:-python3}
REQ=$ROOT/requirements/lerobot

inputs_hash() {
  cat "$REQ"/*.txt "$ROOT/procvlm_ros/setup.py" "$0" | sha256sum | cut -c1-16
}
STAMP=$V/.procvlm-lerobot-setup-$(inputs_hash)
if [ -f "$STAMP" ]; then
  exit 0
fi

step() { printf '\n[setup-lerobot %s] %s\n' "$(date +%T)" "$*"; }
step "venv $V ($($PYTHON --version))"
$PYTHON -m venv "$V"
PIP="$V/bin/python -m pip install -q --disable-pip-version-check"
$PIP --upgrade pip

# torch + torchvision first, on their own, at the releases on this disk (on x86_64 a CUDA build:
# torchvision 0.29.1 from PyPI does not load beside the local CPU wheel).
step "torch 2.14.1 + torchvision 0.29.1"
$PIP torch==2.14.1 torchvision==0.29.1

step "lerobot's dataset dependencies, transformers (requirements/lerobot/requirements.txt)"
$PIP -r "$REQ/requirements.txt"
step "lerobot 0.4.4 and torchcodec without their pins (requirements/lerobot/no-deps.txt)"
$PIP --no-deps -r "$REQ/no-deps.txt"

# torchcodec (lerobot's video decoder) loads the system FFmpeg libraries.
if ! "$V/bin/python" -c 'import torchcodec.decoders' 2>/dev/null; then
  step "FFmpeg libraries for torchcodec (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
fi

step "procvlm_ros (editable)"
$PIP --no-deps --no-build-isolation -e "$ROOT/procvlm_ros"

"$V/bin/python" - <<'PY'
import lerobot.datasets.dataset_tools  # noqa: F401  (imports torch, torchvision, datasets)
from lerobot.datasets.lerobot_dataset import CODEBASE_VERSION
import torchcodec.decoders  # noqa: F401
import procvlm_ros.label.cli  # noqa: F401
import lerobot
import torch
print(f'lerobot venv ok: lerobot {lerobot.__version__} (dataset {CODEBASE_VERSION}), '
      f'torch {torch.__version__}')
PY
rm -f "$V"/.procvlm-lerobot-setup-*
touch "$STAMP"
