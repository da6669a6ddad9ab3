#!/usr/bin/env bash
# The GPU benchmarks of the README, on one datacenter GPU, in under 8 minutes, into one folder:
#   1. bench prefill on the llava-ov-7b and drivemm-8b shapes: keep 1.0 / 0.25 / 0.1, pruners
#      tfps, divprune, fastv, mvpruner, prune layers 0 and 2;
#   2. bench latency on the drivemm-8b shape: stage budget, eager vs compiled decode, roofline;
#   3. bench pruners on CUDA (selection time, 6 x 729 tokens);
#   plus the bandwidth floors of the H100 and H200 (--device-spec), and the environment.
# Usage: scripts/gpu-bench.sh [OUT_DIR]   (default bench-out/gpu-<date>; needs scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-out/gpu-$(date +%Y%m%d-%H%M%S)}
CLI=.venv/bin/drive-vlm
if [[ ! -x $CLI ]]; then
  echo "gpu-bench: $CLI not found; run scripts/setup.sh first" >&2
  exit 2
fi
if ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo 'gpu-bench: torch sees no CUDA device; these benchmarks need one' >&2
  exit 2
fi
mkdir -p "$OUT"
START=$SECONDS
step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, say how long it took
  local name=$1
  shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  echo "== $name done in $((SECONDS - t0)) s (total $((SECONDS - START)) s)"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  .venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "cuda",
torch.version.cuda, "transformers", transformers.__version__)'
} > "$OUT/env.txt" 2>&1

for preset in llava-ov-7b drivemm-8b; do
  step "prefill-$preset" $CLI bench prefill --preset "$preset" --device cuda \
    --pruners tfps divprune fastv mvpruner --keep-ratios 1.0 0.25 0.1 --prune-layers 0 2 \
    --warmup 1 --repeats 3 --new-tokens 8 \
    --json-out "$OUT/prefill-$preset.json" --markdown-out "$OUT/prefill-$preset.md" \
    --plot "$OUT/prefill-$preset.png"
done

# Two keep ratios: each static-cache shape is one compile of the 8B decode step.
step latency-drivemm-8b $CLI bench latency --preset drivemm-8b --device cuda \
  --keep-ratios 1.0 0.1 --decode-backends eager compiled --new-tokens 64 --warmup 2 \
  --repeats 5 --node-frames 0 --out-dir "$OUT/latency-drivemm-8b"

step pruners-cuda $CLI bench pruners --device cuda --dims 1152 3584 --keep-ratios 0.25 0.1 \
  --warmup 3 --repeats 20 --json-out "$OUT/pruners-cuda.json" \
  --markdown-out "$OUT/pruners-cuda.md"

for spec in h100 h200; do
  step "floor-$spec" $CLI bench latency --device-spec "$spec" --preset drivemm-8b \
    --out-dir "$OUT/floors"
done

echo "gpu-bench: everything is in $OUT ($((SECONDS - START)) s)"
