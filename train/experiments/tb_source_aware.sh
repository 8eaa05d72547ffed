#!/usr/bin/env bash
# The TB issue's comparison: ImageNet EfficientNet-Lite0 teachers at 224 px, trained on image labels only, with
# and without each source-aware change, then every map method scored on the same validation TB films.
# Usage: bash train/experiments/tb_source_aware.sh [VARIANT ...]   (default: all five, in this order)
# Each variant writes runs/tb-lite0-<variant>/teacher/ and its log; runs/eval/tb-lite0-<variant>-tbloc.json holds
# its localisation report; runs/wall_times.txt gets the wall time of each training run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-../shared/data/tbx11k}
EPOCHS=${EPOCHS:-6}
declare -A FLAGS=(
    [base]=""
    [balanced]="--sampling source-balanced"
    [adversary]="--source-adversary 1.0"
    [harmonised]="--harmonise"
    [all]="--sampling source-balanced --source-adversary 1.0 --harmonise"
)
VARIANTS=("${@:-base balanced adversary harmonised all}")
mkdir -p runs/eval
for variant in ${VARIANTS[*]}; do
    name="tb-lite0-$variant"
    if [ ! -f "runs/$name/teacher/best/model.safetensors" ]; then
        start=$SECONDS
        # shellcheck disable=SC2086
        python train/tb_localize.py --root "$ROOT" --output-dir "runs/$name" --stage teacher \
            --teacher-preset tb-efficientnet-lite0 --pretrained --epochs "$EPOCHS" --lr 3e-4 --warmup-epochs 1 \
            ${FLAGS[$variant]} > "runs/$name.log" 2>&1
        echo "$name $((SECONDS - start))" >> runs/wall_times.txt
    fi
    cxrdistill evaluate --model "runs/$name/teacher/best" --dataset tbx11k --root "$ROOT" --task tb-localisation \
        --lung-model models/lung-unet-256 --map-methods hirescam layercam-finer layercam-multiscale \
        --json "runs/eval/$name-teacher-tbloc.json" > /dev/null
done
