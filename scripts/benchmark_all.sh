#!/usr/bin/env bash
# Benchmarks every method present at its :imagenet preset (ResNet-50 or ViT-S/16 at 224x224) on
# synthetic images, so that no data set is needed: one JSON line per method, and OUTDIR/bench_M.json.
#   [METHODS="simclr byol"] bash scripts/benchmark_all.sh [OUTDIR] [BATCH] [PEAK_TFLOPS]
# PEAK_TFLOPS: the device's peak for MFU (an H100 SXM: 989 dense bf16, ~495 TF32, 67 fp32 FMA).
set -u
cd "$(dirname "$0")/.."
out=${1:-runs/benchmarks}; batch=${2:-128}; peak=${3:-0}
mkdir -p "$out"
for m in ${METHODS:-simclr byol moco dino swav pirl simclr2 paws}; do
  [ -f "$m/train.py" ] || continue
  timeout "${TIMEOUT:-300}" python3 scripts/benchmark.py --config "$m/config.py:imagenet" \
    --config.data.name=synthetic --config.data.image_size=256 --config.data.batch_size="$batch" \
    --steps 10 --peak_tflops "$peak" --json "$out/bench_$m.json" 2>"$out/bench_$m.log" \
    || { echo "{\"method\": \"$m\", \"error\": \"exit $?\"}"; tail -5 "$out/bench_$m.log"; }
done
