#!/usr/bin/env bash
# One call on a fresh GPU machine: build the extension with its CUDA kernels, run the GPU tests, then the
# must-run benchmark set (B=256 loss, full pass, sgc and cgc, dense and head, every backend), then more
# while the budget allows (the glue ablation, kernel launch counts, fwd/bwd split, ResNet-18 shape). Every
# result lands in $OUT (default ./gpu_results), at most 8 files:
#   device.txt build.log gpu_tests.log memcheck.log ops.csv bench.log launches.md summary.md
# (cam mode: device.txt build.log cam.csv cam.log summary.md; train mode: device.txt build.log
#  train_precision.csv step.csv train.log summary.md)
# Usage: BUDGET=520 [WHEELS=dir] bash benchmarks/gpu_check.sh [all|tests|bench|cam|train]
#   tests: build, GPU tests, compute-sanitizer memcheck, racecheck and synccheck; bench: build, benchmarks; all (default): build, GPU
#   tests, benchmarks (no memcheck); cam: build, then bench_cam.py (sgc_fast.CAM against pytorch-grad-cam,
#   captum and torchcam; fp32 and bf16, ResNet-18/50 and ConvNeXt-T at 224 px, B = 1/16/64) into cam.csv and
#   cam.log. The anchors are benchmark-only: on a machine without internet put their wheels (grad-cam, ttach,
#   captum, torchcam and what the machine lacks of their needs) in a folder, WHEELS=dir; a missing anchor is a
#   failed row, sgc_fast's rows still run. train: build, then one sgc training epoch per precision (fp32, bf16;
#   ResNet-50, 224 px, batch 64, 512 synthetic images) with bench_train.py --precision, the whole-step
#   comparison with the research pipeline (bench_step.py --preset gpu: ResNet-50 b64, ResNet-18 b192), then a 2-epoch
#   sgc-train run with --amp bf16 --channels-last (the fused kernels on reduced-precision features, end to end).
# Split over two calls on one warm machine, the second build is an incremental no-op (build/ is kept).
set -uo pipefail
MODE=${1:-all}
case "$MODE" in all|tests|bench|cam|train) ;; *) echo "usage: $0 [all|tests|bench|cam|train]" >&2; exit 2;; esac
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_results}
mkdir -p "$OUT"
BUDGET=${BUDGET:-520}
PY=${PY:-python3}
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
export PYTHONUNBUFFERED=1
stage() { echo "== $1 (t=$(($(date +%s) - START))s, $(left)s left)" | tee -a "$OUT/summary.md"; }

stage "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -2; nproc; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

stage "build (FORCE_CUDA=1, sm_90)"
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-$($PY tools/find_cuda_home.py)}  # the toolkit of the nvcc on the PATH
if ! timeout $(($(left) - 60)) $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED" | tee -a "$OUT/summary.md"; exit 1
fi
grep -iE "warning|error" "$OUT/build.log" | head -20
$PY -c "import sgc_fast; print(sgc_fast.explain_backends('cuda')); print(sgc_fast.explain_glue('cuda'))" 2>&1 \
  | tee -a "$OUT/summary.md"

if [ "$MODE" = cam ]; then
  stage "CAM extraction against the CAM libraries"
  if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --find-links "$WHEELS" grad-cam captum torchcam >> "$OUT/cam.log" 2>&1 \
      || echo "anchor install failed (see cam.log)" | tee -a "$OUT/summary.md"
  fi
  for amp in fp32 bfloat16; do
    [ "$(left)" -gt 60 ] || break
    timeout $(($(left) - 30)) $PY benchmarks/bench_cam.py --device cuda --amp $amp --reps 20 --warmup 3 \
      --csv "$OUT/cam.csv" 2>&1 | tee -a "$OUT/cam.log"
  done
  stage "done"
  exit 0
fi

if [ "$MODE" = train ]; then
  stage "training epoch per precision (bench_train.py --precision)"
  timeout $(($(left) - 150)) $PY benchmarks/bench_train.py --device cuda --precision fp32 --precision bf16 \
    -a resnet50 --image-size 224 -b 64 --images 512 -j 8 --repeats 2 --csv "$OUT/train_precision.csv" 2>&1 | tee -a "$OUT/train.log"
  stage "whole training steps: research pipeline vs the library (bench_step.py --preset gpu)"
  timeout $(($(left) - 120)) $PY benchmarks/bench_step.py --preset gpu --device cuda -j 8 --steps 5 \
    --csv "$OUT/step.csv" 2>&1 | tee -a "$OUT/train.log"
  stage "sgc-train --amp bf16 --channels-last, 2 epochs"
  timeout $(($(left) - 10)) $PY -m sgc_fast.train --dataset synthetic --image-size 224 --limit 1024 -b 64 \
    -a resnet50 --epochs 2 --lr 0.01 --amp bf16 --channels-last -j 8 --no-progress --save_dir /tmp/ck \
    --log_dir /tmp/lg 2>&1 | tee -a "$OUT/train.log"
  stage "done"
  exit 0
fi

if [ "$MODE" != bench ]; then
  stage "GPU tests"
  share=$([ "$MODE" = tests ] && echo 4 || echo 2)  # fifths of the time left
  timeout $(( $(left) * share / 5 )) $PY -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/gpu_tests.log" 2>&1
  echo "pytest exit $?" | tee -a "$OUT/summary.md"
  tail -25 "$OUT/gpu_tests.log"
  grep -E "passed|failed" "$OUT/gpu_tests.log" | tail -1 >> "$OUT/summary.md"
  if [ "$MODE" = tests ] && command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck synccheck; do  # all three logs go to memcheck.log
      [ "$(left)" -gt 60 ] || break
      stage "compute-sanitizer $tool (tests/cuda_memcheck_case.py)"
      timeout $(( $(left) / 2 )) compute-sanitizer --tool $tool $PY tests/cuda_memcheck_case.py \
        >> "$OUT/memcheck.log" 2>&1
      echo "$tool exit $?" | tee -a "$OUT/summary.md"
      tail -2 "$OUT/memcheck.log" | tee -a "$OUT/summary.md"
    done
  fi
fi
if [ "$MODE" = tests ]; then
  stage "done"
  exit 0
fi

stage "must-run benchmarks: B=256 K=2048 loss, full pass"
timeout $(($(left) - 20)) $PY benchmarks/bench_ops.py --preset gpu-must --passes full --csv "$OUT/ops.csv" \
  > "$OUT/bench.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/summary.md"

if [ "$(left)" -gt 90 ]; then
  stage "glue and tensor-core ablation: native / triton / torch glue, Triton tl.dot ieee / tf32x3 / tf32 (B=256 full pass)"
  timeout $(($(left) - 45)) $PY benchmarks/bench_ops.py --shape 256,2048,7,7,224,224 --passes full \
    --backends cuda,cuda:torch-glue,triton,triton:tf32x3,triton:tf32,triton:triton-glue,triton:torch-glue \
    --csv "$OUT/ops.csv" \
    >> "$OUT/bench.log" 2>&1
  echo "glue ablation exit $?" | tee -a "$OUT/summary.md"
fi
if [ "$(left)" -gt 40 ]; then
  stage "kernel launches and host time per pass (small shape)"
  timeout $(($(left) - 10)) $PY benchmarks/count_launches.py --device cuda > "$OUT/launches.md" 2>&1
  echo "count_launches exit $?" | tee -a "$OUT/summary.md"
  grep "^|" "$OUT/launches.md" | tee -a "$OUT/summary.md"
fi
if [ "$(left)" -gt 120 ]; then
  stage "fwd/bwd split and ResNet-18 shape, fused backends and reference"
  timeout $(($(left) - 15)) $PY benchmarks/bench_ops.py --shape 256,2048,7,7,224,224 --passes fwd,bwd \
    --backends reference,cuda,triton,floor --csv "$OUT/ops.csv" >> "$OUT/bench.log" 2>&1
  timeout $(($(left) - 10)) $PY benchmarks/bench_ops.py --shape 256,512,7,7,224,224 --passes full \
    --backends research,reference,cuda,triton,floor --csv "$OUT/ops.csv" >> "$OUT/bench.log" 2>&1
fi
stage "done"
sed -n '/^| B /,$p' "$OUT/bench.log" | tee -a "$OUT/summary.md"
