#!/usr/bin/env bash
# Rebuild the bundled model-1 default (models/segmenter/1) from nothing: a synthetic training cohort,
# then training in two stages (from scratch, then fine-tuning at a lower learning rate), each capped in
# wall time. One command:  models/segmenter/reproduce.sh [OUT_MODEL_DIR]
# (~50 min on 2 CPU cores; a GPU is used automatically if TensorFlow sees one). The held-out evaluation
# is separate and documented in docs/model1.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-var/segmenter}
OUT=${1:-$WORK/model}
rm -rf "$WORK/train" "$WORK/stage1"
nice -n 10 "$BIN/ich-node" synth --cases 32 --out "$WORK/train" --seed 101 --head-source mixed --workers 2
COMMON=(--cohort "$WORK/train" --spacing 1.5 --patch 48 --batch-size 3 --base-filters 8 --steps-per-epoch 40
        --workers 2 --threads 2)
nice -n 10 "$BIN/ich-node" train segmenter "${COMMON[@]}" --out "$WORK/stage1" --version 0 \
  --epochs 28 --learning-rate 1e-3 --max-minutes 32 --seed 0
nice -n 10 "$BIN/ich-node" train segmenter "${COMMON[@]}" --out "$OUT" --version 1 --init-from "$WORK/stage1" \
  --epochs 20 --learning-rate 3e-4 --max-minutes 19 --seed 1
