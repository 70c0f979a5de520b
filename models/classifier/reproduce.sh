#!/usr/bin/env bash
# Rebuild the bundled model-2 default (models/classifier/1) from nothing, with its evaluation report:
# a synthetic cohort (360 cases, 5 mm, matrix 256), a separate warm-up cohort for the frozen CNN
# backbones, then the seed's protocol. One command:  models/classifier/reproduce.sh [OUT_MODEL_DIR]
# (~1.5 h on 2 CPU cores, most of it feature extraction, cached under $WORK/cache for reruns).
# The shipped v1 was trained on the generator as of its commit (see metadata.json: training_data);
# the generator has since gained realism, so a rebuild gives a similar, not an identical, model.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-var/classifier}
OUT=${1:-$WORK/model}
[ -f "$WORK/cohort/manifest.csv" ] || nice -n 10 "$BIN/ich-node" synth --cases 360 --out "$WORK/cohort" \
  --seed 2024 --thickness 5 --matrix 256 --workers 2
[ -f "$WORK/warmup/manifest.csv" ] || nice -n 10 "$BIN/ich-node" synth --cases 64 --out "$WORK/warmup" \
  --seed 7 --thickness 5 --matrix 256 --workers 2
nice -n 10 "$BIN/ich-node" train classifier --cohort "$WORK/cohort" --warmup-cohort "$WORK/warmup" \
  --cache "$WORK/cache" --out "$OUT"
