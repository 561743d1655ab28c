#!/usr/bin/env bash
# Issue #12's measurements that need a CPU with AVX512-BF16 (or AMX), in one command, one after
# another, each writing its report under benchmarks/results/ (or $RESULTS):
#
#   benchmarks/bf16_suite.sh [DATA]        # DATA defaults to ../shared/data/defungi
#
#   1. train_throughput: every preset x fp32 NCHW and bf16 + channels_last, on a random 1,280
#      images (efficiency >= 0.92; speedup >= 2.0 over fp32 reference; >= 1.1 / 1.3 over bf16 ref),
#      then augment_batch: ms per batch per preset, microscopy eager vs compiled
#   2. compile_cpu in bf16 (compile the default only where it wins >= 10 % net)
#   3. predict_throughput with every backend, PyTorch bf16 included, resnet18 at 224 px
#   4. speedrun: recipes/defungi-fast.yaml at its 112 px cut to the 7 epochs that fit 8 min,
#      3 seeds, TTA on the last weights; time to 85 %
#
# Nothing else may run on the machine meanwhile. About 75 min on a 2-core BF16 machine
# (2026-11-30: 1 took 16 min, 2 8 min, 3 15 min, 4 26 min); STEPS="3 4" runs a subset.
# QUICK=1 runs every step at toy scale on DATA (any class-folder or train/test folder) to
# check the commands, not the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-../shared/data/defungi}
RESULTS=${RESULTS:-benchmarks/results}
STEPS=${STEPS:-"1 2 3 4"}
WORK=${WORK:-runs/bf16-suite}
mkdir -p "$RESULTS" "$WORK"

if [[ -z "${QUICK:-}" ]] && ! grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
    echo "bf16_suite: this CPU has no AVX512-BF16/AMX; bf16 would be emulated (QUICK=1 to test)" >&2
    exit 2
fi
if [[ -n "${QUICK:-}" ]]; then
    TT=(--presets flips --modes fp32-cl,bf16 --img-size 32 --batch-size 8 --epochs 2
        --ref-epochs 1 --ref-workers 0)
    AB=(--img-size 32 --batch-size 8 --reps 2)
    CC=(--models simple_cnn --img-size 32 --batch-size 4 --steps 2 --typical-steps 10)
    TRAIN=(--img-size 32 --epochs 1 --batch-size 8)
    PT=(--limit-images 8 --latency-images 3 --repeats 1 --batch-sizes 1,4)
    SR=(--seeds 0 --set data.img_size=32 --set train.epochs=1 --set train.batch_size=8)
else
    TT=(--limit-images 1280 --modes fp32,bf16 --epochs 5 --ref-epochs 2)
    AB=()
    CC=(--precision bf16)
    # a real-data model to compare the backends with one another, not a good fungi model
    TRAIN=(--img-size 224 --epochs 2 --batch-size 64 --augment flips --duplicates drop)
    PT=(--limit-images 500 --repeats 2)
    SR=(--seeds 0,1,2 --set train.epochs=7 --set train.warmup_epochs=1 --tta)
fi

for step in $STEPS; do
    echo "== step $step: $(date -u +%H:%M:%S)"
    case $step in
        1) $PY benchmarks/train_throughput.py --data "$DATA" "${TT[@]}" \
               --out "$RESULTS/train_throughput_bf16.txt"
           $PY benchmarks/augment_batch.py --data "$DATA" "${AB[@]}" \
               --out "$RESULTS/augment_batch_bf16.txt" ;;
        2) $PY benchmarks/compile_cpu.py "${CC[@]}" --out "$RESULTS/compile_cpu_bf16.txt" ;;
        3) if [[ ! -f "$WORK/predict-r18/metrics.json" ]]; then
               "$(dirname "$PY")/medscope" train -q --data "$DATA" --model resnet18 "${TRAIN[@]}" \
                   --out "$WORK/predict-r18"
           fi
           $PY benchmarks/predict_throughput.py --run "$WORK/predict-r18" "${PT[@]}" \
               --backends torch-fp32,torch-bf16,onnx-fp32,onnx-int8 \
               --out "$RESULTS/predict_throughput_bf16.txt" ;;
        4) $PY benchmarks/speedrun.py --data "$DATA" "${SR[@]}" \
               --out "$RESULTS/speedrun_defungi_bf16.txt" ;;
        *) echo "bf16_suite: unknown step $step (1-4)" >&2; exit 2 ;;
    esac
done
echo "== done $(date -u +%H:%M:%S); reports in $RESULTS/"
