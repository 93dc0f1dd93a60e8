#!/usr/bin/env bash
# Benchmarks every method present at its :imagenet preset (ResNet-50 or ViT-S/16) on synthetic images at
# the preset's canvas, so that no data set is needed, in bfloat16 where the config has model.dtype; then
# prints one table row per method: images/s of the step (and of the full loop), analytic GFLOPs per
# image (XLA's cost analysis of the lowered step, which still counts the convolutions that cuDNN runs),
# the step's TFLOP/s, MFU against PEAK_TFLOPS per device, and the compile time.
#   [METHODS="simclr byol"] [IMAGE_SIZE=256] [STEPS=10] [TIMEOUT=600] [EXTRA="--config.F=V ..."] \
#     bash scripts/benchmark_all.sh [OUTDIR] [BATCH] [PEAK_TFLOPS]
# PEAK_TFLOPS: one device's dense peak for MFU (an H100 SXM: 989 bf16, ~495 TF32, 67 fp32 FMA; an H200 as
# the H100). Each method's JSON and log: OUTDIR/bench_M.json, OUTDIR/bench_M.log.
set -u
cd "$(dirname "$0")/.."
out=${1:-runs/benchmarks}; batch=${2:-128}; peak=${3:-0}
mkdir -p "$out"
methods=${METHODS:-simclr byol moco dino swav pirl simclr2 paws}
for m in $methods; do
  [ -f "$m/train.py" ] || continue
  rm -f "$out/bench_$m.json"
  extra=()
  # bfloat16 only where the preset has the field; PAWS' support batch takes at most the 10 synthetic classes.
  mapfile -t extra < <(python3 - "$m" <<'EOF'
import importlib, sys
config = importlib.import_module(f"{sys.argv[1]}.config").get_config("imagenet")
if "dtype" in config.model:
    print("--config.model.dtype=bfloat16")
if "classes_per_batch" in config.method and config.method.classes_per_batch > 10:
    print("--config.method.classes_per_batch=10")
EOF
  )
  size=()
  [ -n "${IMAGE_SIZE:-}" ] && size=(--config.data.image_size="$IMAGE_SIZE")
  timeout "${TIMEOUT:-600}" python3 scripts/benchmark.py --config "$m/config.py:imagenet" \
    --config.data.name=synthetic "${size[@]}" --config.data.batch_size="$batch" \
    "${extra[@]}" ${EXTRA:-} --steps "${STEPS:-10}" --peak_tflops "$peak" --json "$out/bench_$m.json" >"$out/bench_$m.log" 2>&1 \
    || { echo "$m: exit $? (last lines of $out/bench_$m.log):"; tail -3 "$out/bench_$m.log"; }
done
python3 - "$out" $methods <<'EOF'
import json, pathlib, sys
out, methods = pathlib.Path(sys.argv[1]), sys.argv[2:]
print("| method | device x n | dtype | batch | step images/s | loop images/s | GFLOPs/image | TFLOP/s | MFU % | compile s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for m in methods:
    path = out / f"bench_{m}.json"
    if not path.exists():
        print(f"| {m} | failed: see {out}/bench_{m}.log | | | | | | | | |")
        continue
    f = json.loads(path.read_text())
    mfu = f"{f['mfu_percent']:.3g}" if "mfu_percent" in f else "(no peak given)"
    print(
        f"| {m} | {f['device']} x {f['devices']} | {f['dtype']} | {f['batch_size']} | {f['step_images_per_s']:.0f} | "
        f"{f['loop_images_per_s']:.0f} | {f['flops_per_image'] / 1e9:.3g} | {f['step_tflops']:.3g} | {mfu} | "
        f"{f['compile_s']:.0f} |"
    )
EOF
