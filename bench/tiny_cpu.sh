#!/usr/bin/env bash
# Reproduce the benchmark figures of docs/export.md: the tiny random Qwen3-VL (test fixture) on
# this machine's CPU. NOT indicative of ProcVLM-2B on a GPU; on a GPU machine or a Jetson run
# `procvlm-export bench` on the real checkpoint instead (commands in docs/export.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PY:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/out/bench}
cd "$ROOT/procvlm_ros"  # not the repository root: there `procvlm_ros` is the ROS package folder
mkdir -p "$OUT" "$ROOT/bench/results"
[ -f "$OUT/tiny/model.safetensors" ] || "$PY" -c \
    "from procvlm_ros.testing.tiny_model import build_tiny_checkpoint as b; b('$OUT/tiny', seed=7)"
"$PY" -m procvlm_ros.export.cli --quiet onnx --model "$OUT/tiny" --out "$OUT/tiny-onnx" \
    --image-size 640x480 --max-frames 8
# Once with one CPU thread per library (no thread-pool contention on a shared machine), once
# with the libraries' defaults.
for threads in 1 0; do
    "$PY" -m procvlm_ros.export.cli --quiet bench --model "$OUT/tiny" --onnx "$OUT/tiny-onnx" \
        --frames 8 --image-size 640x480 --new-tokens 32 --repeats 5 --windows 6 \
        --threads "$threads" --json "$ROOT/bench/results/tiny-cpu-threads$threads.json" \
        | tail -n 5
done
