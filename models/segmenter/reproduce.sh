#!/usr/bin/env bash
# Rebuild the bundled model-1 default (models/segmenter/1) from nothing: a synthetic training cohort,
# then training capped in wall time. One command:  models/segmenter/reproduce.sh [OUT_MODEL_DIR]
# (~60 min on 2 idle CPU cores; GPU used automatically if TensorFlow sees one). The held-out evaluation
# is separate and documented in docs/model1.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-var/segmenter}
OUT=${1:-var/segmenter/model}
rm -rf "$WORK/train"
nice -n 10 "$BIN/ich-node" synth --cases 32 --out "$WORK/train" --seed 101 --head-source mixed --workers 2
nice -n 10 "$BIN/ich-node" train segmenter --cohort "$WORK/train" --out "$OUT" --version 1 \
  --spacing 1.5 --patch 48 --batch-size 3 --base-filters 8 --epochs 30 --steps-per-epoch 40 \
  --workers 2 --threads 2 --max-minutes 40 --seed 0
