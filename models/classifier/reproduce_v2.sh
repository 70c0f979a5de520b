#!/usr/bin/env bash
# Rebuild the model-2 candidate of issue 16 part 2 (feature recipe v2: 1 mm radiomics grid, fixed bins,
# CNN slices cut in mm) from nothing: a 1,000-case mixed cohort (matrix 256/512, 1/2.5/5 mm slices,
# baselines only) built in parts, a separate 48-case warm-up cohort for the frozen CNN backbones, the
# seed's protocol with 30 % of each class held out, then both shipped and candidate models run the
# node's way on the held-out cases (AUC by domain, calibration, the registry's gate).
# One command:  models/classifier/reproduce_v2.sh [OUT_MODEL_DIR]
# (~70 min of cohort + features on 2 CPU cores, ~33 GB of DICOM kept for the held-out run; reruns
# resume: finished parts and cached features are reused).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-var/m2big}
OUT=${1:-$WORK/model}
"$BIN/python" benchmarks/classifier_cohort.py --out "$WORK/cohort" --cases 1000 --part 100 --seed 2612 --keep-dicom
"$BIN/python" benchmarks/classifier_cohort.py --out "$WORK/warmup" --cases 48 --part 48 --seed 2613 --keep-dicom
"$BIN/ich-node" train classifier --features v2 --cohort "$WORK/cohort" --warmup-cohort "$WORK/warmup" \
  --cache "$WORK/cohort/features-cache" --out "$OUT" --version 2 --n-boot 500 --test-fraction 0.3
"$BIN/python" benchmarks/classifier_domains.py --cohort "$WORK/cohort" --model "$OUT" \
  --json "$WORK/classifier_domains.json"
