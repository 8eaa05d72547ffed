#!/usr/bin/env bash
# The TB issue's distillation step: 28-px EfficientNet-Lite0 students distilled from the best teacher of
# tb_source_aware.sh, with the plain CAM alignment and with the lung-guided one, then scored like the teachers.
# Usage: bash train/experiments/tb_students.sh [TEACHER_VARIANT]
# Without a variant the teacher is chosen by a rule fixed before the runs: the highest cross-fitted mIoU of the
# teacher's own CAM inside the lungs (the map a student learns from) on the validation TB films.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-../shared/data/tbx11k}
EPOCHS=${EPOCHS:-15}  # students converge slower than their teachers: a 6-epoch run was still improving
VARIANT=${1:-$(python - <<'PY'
import glob, json
scores = {}
for path in glob.glob("runs/eval/tb-lite0-*-teacher-tbloc.json"):
    report = json.load(open(path))
    scores[path.split("/")[-1].removeprefix("tb-lite0-").removesuffix("-teacher-tbloc.json")] = (
        report["localisation"]["CAM (tb) x lung mask"]["miou_cross_fitted"], report["same_hospital_auroc"])
print(max(scores, key=scores.get))
PY
)}
TEACHER="runs/tb-lite0-$VARIANT/teacher/best"
echo "teacher: $TEACHER"
# the student trains on its teacher's data recipe (sampling, harmonisation); the adversary is the teacher's alone
declare -A DATA=(
    [base]="" [balanced]="--sampling source-balanced" [adversary]="" [harmonised]="--harmonise"
    [all]="--sampling source-balanced --harmonise"
)
declare -A FLAGS=([cam]="" [lungcam]="--lung-model models/lung-unet-256")
for kind in cam lungcam; do
    name="tb-lite0-$VARIANT-student-$kind"
    if [ ! -f "runs/$name/student/best/model.safetensors" ]; then
        start=$SECONDS
        # shellcheck disable=SC2086
        python train/tb_localize.py --root "$ROOT" --output-dir "runs/$name" --stage student --teacher "$TEACHER" \
            --student-preset tb-efficientnet-lite0-lowres --pretrained --epochs "$EPOCHS" --lr 3e-4 \
            --warmup-epochs 1 ${DATA[$VARIANT]} ${FLAGS[$kind]} > "runs/$name.log" 2>&1
        echo "$name $((SECONDS - start))" >> runs/wall_times.txt
    fi
    cxrdistill evaluate --model "runs/$name/student/best" --dataset tbx11k --root "$ROOT" --task tb-localisation \
        --lung-model models/lung-unet-256 --map-methods hirescam layercam-finer layercam-multiscale \
        --json "runs/eval/$name-tbloc.json" > /dev/null
done
