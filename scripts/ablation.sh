#!/usr/bin/env bash
# The ablation of docs/results/box-quality.md: every lever of the `peaks` recipe, one at a time, on plain phantoms.
#
#   scripts/ablation.sh [WORKDIR]          (default WORKDIR: runs/ablation; about 75 minutes on 2 cores)
#
# One base model (ResNet-18, GAP, 8 epochs, the first embedded model's recipe) on the 2,000 plain phantoms of seed 0;
# from it, msa-init (2 epochs) + end2end (4 epochs) of each map variant (MSA stride 16 or 8, GAP / log-sum-exp /
# top-k pooling, a fusion convolution), and attention-mining fine-tuning with KP (2 epochs) of the stride-16 and
# stride-8 GAP models. Every model's per-finding box levels are fixed on 400 plain validation phantoms (seed 5;
# levels only: no shapes, no stage weights, the levers that came after this ablation);
# `miner bench localize` then scores each model and inference setting on unseen phantoms (seed 1 plain, seed 2
# real-background, 600 each). Training seed 0 throughout: differences of a few hundredths are within the spread
# that docs/results/box-quality.md gives for three seeds of the default recipe.
set -euo pipefail

WORK=${1:-runs/ablation}
MINER=${MINER:-miner}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
FINDINGS=Atelectasis,Cardiomegaly,Effusion,Infiltration,Mass,Nodule,Pneumonia,Pneumothorax
COMMON=(--arch resnet18_msa --width 0.25 --input-size 256 --classes "$FINDINGS" --epochs 8 --msa-init-epochs 2
        --end2end-epochs 4 --am-epochs 2 --lr 2e-3 --finetune-lr 5e-4 --batch-size 32 --class-weights balanced
        --augment --cache --workers 0 --seed 0 --no-progress --recipe cai2018)
mkdir -p "$WORK"
[ -f "$WORK/plain/Data_Entry_2017.csv" ] || $MINER phantoms "$WORK/plain" --images 2000 --size 256 --seed 0
[ -f "$WORK/val/Data_Entry_2017.csv" ] || $MINER phantoms "$WORK/val" --images 400 --size 256 --seed 5
$MINER train "$WORK/plain" --out "$WORK/base.pt" --stage base "${COMMON[@]}" --resume

variant() {  # NAME MODEL-OPTION...
    local name=$1; shift
    local opts=()
    for o in "$@"; do opts+=(--model-option "$o"); done
    $MINER train "$WORK/plain" --out "$WORK/$name.pt" --stage msa-init,end2end --from "$WORK/base.base.pt" \
        "${COMMON[@]}" "${opts[@]}" --resume
}
variant s16 msa_stride=16
variant s8 msa_stride=8
variant s8-lse msa_stride=8 pooling=lse pool_r=10
variant s8-topk msa_stride=8 pooling=topk pool_k=0.05
variant s8-fuse msa_stride=8 msa_fuse=512
for name in s16 s8; do
    $MINER train "$WORK/plain" --out "$WORK/$name-am.pt" --stage am --from "$WORK/$name.end2end.pt" --kp kp \
        "${COMMON[@]}" --resume
done

# calibrated copies: the peaks recipe's box rule with the LayerCAM maps (and CAM for the map-method row)
for name in s16-am s16 s8 s8-topk s8-fuse s8-am; do
    $MINER calibrate "$WORK/$name.pt" "$WORK/val" --recipe peaks --method layercam --no-shapes --coarse-weights 1 --out "$WORK/cal-$name.pt"
done
for name in s16-am s8-am s8 s8-lse s8-topk; do  # CAM maps (LayerCAM of a log-sum-exp head is a one-cell spike)
    $MINER calibrate "$WORK/$name.pt" "$WORK/val" --recipe peaks --method cam --no-shapes --coarse-weights 1 --out "$WORK/cal-$name-cam.pt"
done

$MINER bench localize --out "$WORK/localize" \
    --row "s16 AM, cai2018 (the seed's)=$WORK/s16-am.pt:recipe=cai2018" \
    --row "s16 AM, steps boxes at 0.85=$WORK/s16-am.pt:recipe=peaks,method=cam,boxes.finding_levels=none,boxes.align_cells=false" \
    --row "+ per-finding levels=$WORK/cal-s16-am-cam.pt:boxes.align_cells=false" \
    --row "+ cells at their centres=$WORK/cal-s16-am-cam.pt" \
    --row "+ LayerCAM maps=$WORK/cal-s16-am.pt" \
    --row "+ erase at 0.5 (not 0.8)=$WORK/cal-s16-am.pt:mining.threshold=0.5" \
    --row "s8 AM (MSA stride 8)=$WORK/cal-s8-am.pt" \
    --row "s8 AM, CAM maps=$WORK/cal-s8-am-cam.pt" \
    --row "s8 AM, cai2018 boxes=$WORK/s8-am.pt:recipe=cai2018" \
    --row "s8 (no AM training)=$WORK/cal-s8.pt" \
    --row "s16 (no AM training)=$WORK/cal-s16.pt" \
    --row "s8, CAM maps=$WORK/cal-s8-cam.pt" \
    --row "s8 log-sum-exp, CAM maps=$WORK/cal-s8-lse-cam.pt" \
    --row "s8 top-k, CAM maps=$WORK/cal-s8-topk-cam.pt" \
    --row "s8 top-k=$WORK/cal-s8-topk.pt" \
    --row "s8 fusion conv=$WORK/cal-s8-fuse.pt"
