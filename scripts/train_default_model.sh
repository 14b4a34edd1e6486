#!/usr/bin/env bash
# Rebuild the embedded default model, miner/assets/default_model.pt, and its description default_model.json.
#
#   scripts/train_default_model.sh [WORKDIR]          (default WORKDIR: runs/default_model)
#
# The recipe is `miner bench paper`'s (miner.config.PaperConfig): a 2,000-image phantom archive of 256x256
# (seed 0), a ResNet-18-MSA at a quarter of the width (0.72 M parameters, 2.9 MB), stages base (8 epochs),
# msa-init (2), end2end (4) with balanced class weights and augmentation, then attention-mining fine-tuning with
# knowledge preservation (2 epochs) from the end2end checkpoint, seed 0. The AM stage is a second `miner train`
# call exactly as the benchmark runs it, so the benchmark's "KP" model is this model. Runs are deterministic on
# a given machine (same torch build and thread count): a rerun gives the same weights.
#
# Time on the 2-core development machine (torch 2.13 CPU): see "training_seconds" and "load_average" in
# miner/assets/default_model.json (about 15 minutes with other jobs running).
set -euo pipefail

WORK=${1:-runs/default_model}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ASSETS="$ROOT/miner/assets"
FINDINGS=Atelectasis,Cardiomegaly,Effusion,Infiltration,Mass,Nodule,Pneumonia,Pneumothorax
RECIPE=(--arch resnet18_msa --width 0.25 --input-size 256 --classes "$FINDINGS"
        --epochs 8 --msa-init-epochs 2 --end2end-epochs 4 --am-epochs 2 --lr 2e-3 --finetune-lr 5e-4
        --batch-size 32 --class-weights balanced --augment --cache --workers 0 --seed 0 --no-progress)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

mkdir -p "$WORK" "$ASSETS"
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
if [ ! -f "$WORK/phantoms/Data_Entry_2017.csv" ]; then
    miner phantoms "$WORK/phantoms" --images 2000 --size 256 --seed 0
fi
miner train "$WORK/phantoms" --out "$WORK/base.pt" --stage base,msa-init,end2end "${RECIPE[@]}" --resume
miner train "$WORK/phantoms" --out "$WORK/am-kp.pt" --stage am --from "$WORK/base.end2end.pt" --kp kp \
    "${RECIPE[@]}" --resume
SECONDS_TAKEN=$(( $(date +%s) - START ))
LOAD_END=$(cut -d' ' -f1 /proc/loadavg)

cp "$WORK/am-kp.pt" "$ASSETS/default_model.pt"
python -m miner.model_card card "$ASSETS/default_model.pt" "$ASSETS/default_model.json" \
    --command "scripts/train_default_model.sh" --seconds "$SECONDS_TAKEN" --load "$LOAD_START,$LOAD_END" \
    --eval-dir "$WORK/check"
echo "wrote $ASSETS/default_model.pt and default_model.json in ${SECONDS_TAKEN} s (load average $LOAD_START -> $LOAD_END)"
