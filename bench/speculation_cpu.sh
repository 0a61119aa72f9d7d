#!/usr/bin/env bash
# Temporal speculative decoding (issue 11) at live cadence on this machine's CPU, one thread per
# library: the demo model on 6 synthetic episodes (every window one sample later than the last,
# the previous answer as the draft) and the tiny random model (drafts useless: the overhead).
# Each backend runs speculation off and on side by side and checks every window token for token.
# Figures in docs/export.md; JSON in bench/results/. NOT indicative of ProcVLM-2B on a GPU: see
# bench/verify_cost_gpu.py for the verify-pass cost on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PY:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/out/bench}
EPISODES=${EPISODES:-6}
cd "$ROOT/procvlm_ros"  # not the repository root: there `procvlm_ros` is the ROS package folder
mkdir -p "$OUT" "$ROOT/bench/results"
DEMO=$("$PY" -c "from procvlm_ros.demo_model import CHECKPOINT_DIR as c; print(c)")
"$PY" -m procvlm_ros.export.cli --quiet onnx --model "$DEMO" --out "$OUT/demo-onnx" \
    --image-size 160x120 --max-frames 8
"$PY" -m procvlm_ros.export.cli --quiet bench-spec --model "$DEMO" --onnx "$OUT/demo-onnx" \
    --episodes synthetic --seed 555 --count "$EPISODES" --threads 1 --label "demo model" \
    --json "$ROOT/bench/results/spec-demo-cpu.json"
[ -f "$OUT/tiny/model.safetensors" ] || "$PY" -c \
    "from procvlm_ros.testing.tiny_model import build_tiny_checkpoint as b; b('$OUT/tiny', seed=7)"
"$PY" -m procvlm_ros.export.cli --quiet onnx --model "$OUT/tiny" --out "$OUT/tiny-onnx-64x48" \
    --image-size 64x48 --max-frames 8
"$PY" -m procvlm_ros.export.cli --quiet bench-spec --model "$OUT/tiny" \
    --onnx "$OUT/tiny-onnx-64x48" --episodes moving --seed 1 --count 3 --max-windows 8 \
    --max-new-tokens 32 --threads 1 --label "tiny random model" \
    --json "$ROOT/bench/results/spec-tiny-cpu.json"
