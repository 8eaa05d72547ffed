#!/usr/bin/env bash
# The MLCAK experiments on the shared NIH ChestX-ray14 subset (nih1000: 800 images at 64 px, 14 findings).
# The teacher sees the 64-px images upsampled to 224 (all the detail it gets is the student's x2.3), the students
# see them area-averaged to 28. The headline is the macro AUROC over the 14 findings (the local head), so runs are
# selected by it. Usage: bash train/experiments/mlcak_nih.sh [TEACHER_DIR] (default: train the teacher first)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-../shared/data/nih1000}
TEACHER=${1:-runs/nih-teacher-224/best}
EPOCHS=${EPOCHS:-20}
COMMON=(--dataset nih --root "$ROOT" --cache-size 64 --select-metric local_macro_auroc --epochs "$EPOCHS")

timed() {  # timed NAME SCRIPT ARGS...: run, log, and record the wall time
    local name=$1; shift
    local start=$SECONDS
    python "$@" "${COMMON[@]}" --output-dir "runs/$name" > "runs/$name.log" 2>&1
    echo "$name $((SECONDS - start))" >> runs/wall_times.txt
}

mkdir -p runs
if [ ! -f "$TEACHER/model.safetensors" ]; then
    timed nih-teacher-224 train/train_teacher.py
fi
timed nih-student-28-alone train/distill_student.py --image-size 28 --ablation none
timed nih-student-28-mlcak train/distill_student.py --image-size 28 --ablation all --teacher "$TEACHER"
timed nih-student-28-alone-aug train/distill_student.py --image-size 28 --ablation none --augment
