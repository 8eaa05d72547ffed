#!/usr/bin/env bash
# TB maps with room to localise: EfficientNet-Lite0 at 224 px with the "fine" stem (a 14 x 14 map instead of 7 x 7),
# trained on image labels only with global average, top-k or log-sum-exp pooling of the class map, and the same
# backbone trained with the training films' boxes (the box-supervised reference). Every run is then scored with
# cxrdistill evaluate --task tb-localisation (maps inside the lungs, the location prior, map sanity, AP50).
# Usage: bash train/experiments/tb_maps.sh [VARIANT...]   (default: all; finished runs are skipped)
#
# Release rule, fixed before the runs: the box-drawing model is the weakly supervised variant with the highest
# cross-fitted mIoU of its own map kept inside the lungs ("CAM (tb) x lung mask") on the validation TB films, among
# those whose peak-cell share (TB films) is <= 0.30 and whose same-hospital AUROC is >= 0.85; otherwise the released
# tb-student-28 keeps drawing the boxes. The box-supervised reference is an upper bound, not a release candidate.
#
# Second rule, written after the runs above and before the run it decides (boxes-s1): the box-supervised model
# ships as the box-drawing model, labelled box-supervised in the app and on its card, if a second seed of its recipe
# (--seed 1) has a same-hospital AUROC >= 0.85 and its map inside the lungs beats tb-student-28's inside the lungs
# with a paired 95% interval above 0 on the validation TB films; otherwise tb-student-28 keeps drawing the boxes.
#
# Third rule, written before the lung-crop runs (boxes-crop, topk-crop) and the seed-0 re-run of boxes they are
# compared with: the box-drawing model gives no answer (the TB answer is the answering model's, chosen apart), so it
# is chosen on its map. Of the two box-supervised seed-0 runs (boxes: whole films; boxes-crop: films cropped to their
# lungs), the one whose own map has the higher cross-fitted mIoU on the validation TB films ships as the box-drawing
# model, labelled box-supervised in the app and on its card, if (a) its peak-cell share on TB films is <= 0.30,
# (b) its own map beats tb-student-28's own map with a paired 95% interval above 0, and (c) its same-hospital AUROC
# is >= 0.80 (its probability only ranks its boxes; the 0.85 above was set for a model that might also answer).
# A box-supervised model's own map is the map its box loss trains: the positive class's log-odds per cell
# (map target log-odds), scored beside its class activation map.
# Otherwise tb-student-28 keeps drawing the boxes. topk-crop against topk answers the lung-crop question for the
# weakly supervised map; it is not a release candidate.
#
# Fourth rule, written before the third round's runs (boxes-crop-e12: twice the epochs; boxes-crop-dice: a soft Dice
# term on the box films beside the per-cell cross-entropy; boxes-crop-320: 320-px lung crops, a 20 x 20 map): of
# these three and the released tb-boxes-224 (boxes-crop), the one whose own map has the highest cross-fitted mIoU on
# the validation TB films draws the boxes, if it also meets the third rule's (a)-(c) and has pointing >= 0.70;
# tb-boxes-224 is replaced only by a run that does all of this. Picking the best of four on the same films flatters
# the winner; the maintainers' held-out films re-measure it.
#
# Fifth rule, written before its run (boxes-crop-dice-e12: the Dice term and twice the epochs, the two changes of the
# third round that raised the own map; the released tb-boxes-224 is boxes-crop-e12, whose map x prior x lungs
# interval reached -0.004): it replaces tb-boxes-224 only if, on the same validation films and as released
# (float16), it meets every target of the TB-maps issue: own-map mIoU >= 0.35, pointing >= 0.70, peak-cell share on
# TB films <= 0.30, map x prior x lungs minus prior x lungs with a paired 95% interval above 0, and a same-hospital
# AUROC >= 0.88 (it would then also answer, under the answering rule, like tb-boxes-224 does now).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-../shared/data/tbx11k}
EPOCHS=${EPOCHS:-6}
COMMON=(--root "$ROOT" --stage teacher --teacher-preset tb-efficientnet-lite0-fine --pretrained --epochs "$EPOCHS"
    --lr 3e-4 --warmup-epochs 1 --harmonise)
declare -A FLAGS=(
    [avg]=""
    [topk]="--teacher-pooling topk --teacher-pool-param 0.1"
    [lse]="--teacher-pooling lse --teacher-pool-param 5"
    [boxes]="--box-weight 1.0"
    [boxes-s1]="--box-weight 1.0 --seed 1"
    [boxes-crop]="--box-weight 1.0 --lung-crop models/lung-unet-256"
    [boxes-crop-s1]="--box-weight 1.0 --lung-crop models/lung-unet-256 --seed 1"
    [boxes-crop-e12]="--box-weight 1.0 --lung-crop models/lung-unet-256 --epochs 12"
    [boxes-crop-dice]="--box-weight 1.0 --box-dice 1.0 --lung-crop models/lung-unet-256"
    [boxes-crop-dice-e12]="--box-weight 1.0 --box-dice 1.0 --lung-crop models/lung-unet-256 --epochs 12"
    [boxes-crop-320]="--box-weight 1.0 --lung-crop models/lung-unet-256 --teacher-image-size 320 --cache-size 368"
    [topk-crop]="--teacher-pooling topk --teacher-pool-param 0.1 --lung-crop models/lung-unet-256"
)
mkdir -p runs/eval
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(avg topk lse boxes)
for variant in "${variants[@]}"; do
    name="tbmap-lite0-fine-$variant"
    if [ ! -f "runs/$name/teacher/best/model.safetensors" ]; then
        start=$SECONDS
        # shellcheck disable=SC2086
        python train/tb_localize.py "${COMMON[@]}" --output-dir "runs/$name" ${FLAGS[$variant]} > "runs/$name.log" 2>&1
        echo "$name $((SECONDS - start))" >> runs/wall_times.txt
    fi
    crop=()
    [[ "$variant" == *-crop* ]] && crop=(--lung-crop models/lung-unet-256)
    [[ "$variant" == boxes* ]] && crop+=(--map-target log-odds)  # the map its box loss trains (set by new runs)
    if [ ! -f "runs/eval/$name-contrast.json" ]; then
        cxrdistill evaluate --model "runs/$name/teacher/best" --dataset tbx11k --root "$ROOT" --task tb-localisation \
            --lung-model models/lung-unet-256 --contrast-normal "${crop[@]}" --json "runs/eval/$name-contrast.json" \
            > "runs/eval/$name-contrast.log" 2>&1
    fi
done
