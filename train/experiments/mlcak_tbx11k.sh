#!/usr/bin/env bash
# The MLCAK experiments on the shared TBX11K data, in the order they were run for the README tables.
# Usage: bash train/experiments/mlcak_tbx11k.sh [TEACHER_DIR] (default: train the teacher first)
# Each run writes runs/<name>/ (best/ model + metrics.json + card, history.json, tensorboard) and runs/<name>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-../shared/data/tbx11k}
TEACHER=${1:-runs/teacher-224/best}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-30}

timed() {  # timed NAME SCRIPT ARGS...: run, log, and record the wall time
    local name=$1; shift
    local start=$SECONDS
    python "$@" --root "$ROOT" --output-dir "runs/$name" > "runs/$name.log" 2>&1
    echo "$name $((SECONDS - start))" >> runs/wall_times.txt
}

mkdir -p runs
if [ ! -f "$TEACHER/model.safetensors" ]; then
    timed teacher-224 train/train_teacher.py --epochs 60
fi
# the resolution sweep first (student alone vs MLCAK at each size), then the 28-px ablations
for size in 28 56 112; do
    timed "student-$size-alone-aug" train/distill_student.py --image-size "$size" --ablation none --augment \
        --epochs "$STUDENT_EPOCHS"
    timed "student-$size-mlcak" train/distill_student.py --image-size "$size" --ablation all --teacher "$TEACHER" \
        --epochs "$STUDENT_EPOCHS"
done
timed "student-28-alone" train/distill_student.py --image-size 28 --ablation none --epochs "$STUDENT_EPOCHS"
timed "student-28-logits" train/distill_student.py --image-size 28 --ablation logits --teacher "$TEACHER" \
    --epochs "$STUDENT_EPOCHS"
timed "student-28-attention" train/distill_student.py --image-size 28 --ablation attention --teacher "$TEACHER" \
    --epochs "$STUDENT_EPOCHS"
