#!/usr/bin/env bash
# Rebuild the bundled model-1 default from nothing: a synthetic training cohort of 96 patients, then
# one training run from scratch (cosine-decayed learning rate, best epoch by validation Dice on 14
# held-back cases, capped in wall time). One command:  models/segmenter/reproduce.sh [OUT_MODEL_DIR]
# (~55 min on 2 idle CPU cores; a GPU is used automatically if TensorFlow sees one). The held-out
# evaluation is separate and documented in docs/model1.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-var/segmenter}
OUT=${1:-$WORK/model}
VERSION=${VERSION:-1}   # the bundled default is version 1 (training/registry.py)
rm -rf "$WORK/train"
"$BIN/ich-node" synth --cases 96 --out "$WORK/train" --seed 101 --head-source mixed --workers 2
"$BIN/ich-node" train segmenter --cohort "$WORK/train" --out "$OUT" --version "$VERSION" --spacing 1.5 --patch 48 \
  --batch-size 4 --base-filters 8 --epochs 26 --steps-per-epoch 100 --learning-rate 1e-3 --workers 2 --threads 2 \
  --max-minutes 47 --seed 0
