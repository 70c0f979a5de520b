#!/usr/bin/env bash
# Rebuild bundled classifier version 2 (feature recipe v4: 1 x 1 x 5 mm radiomics grid with thin series
# smoothed down, v1's bins; pre-filter f_test-20-r0.8) from nothing, then judge it the node's way against
# version 1 on the 600-case judgement cohort it was judged on (seed 2615; generated before the model).
# One command:  models/classifier/reproduce_bundled2.sh [OUT_MODEL_DIR]
# (~75 min of cohort + features on 2 CPU cores, ~45 GB of DICOM kept; reruns resume: finished parts and
# cached features are reused).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-var/m2big}
JUDGE=${JUDGE:-var/m2judge}
OUT=${1:-$WORK/model_v4_ftr08}
"$BIN/python" benchmarks/classifier_cohort.py --out "$WORK/cohort" --cases 1000 --part 100 --seed 2612 --features none
"$BIN/python" benchmarks/classifier_cohort.py --out "$WORK/warmup" --cases 48 --part 48 --seed 2613 --features none
"$BIN/ich-node" train classifier --features v4 --prefilter f_test-20-r0.8 --module Radiomics \
  --cohort "$WORK/cohort" --warmup-cohort "$WORK/warmup" --cache "$WORK/cohort/features-cache" \
  --out "$OUT" --version 2 --n-boot 500 --test-fraction 0.05
"$BIN/python" benchmarks/classifier_cohort.py --out "$JUDGE/cohort" --cases 600 --part 100 --seed 2615 --features none
"$BIN/python" benchmarks/classifier_domains.py --cohort "$JUDGE/cohort" --all-cases --model "$OUT" \
  --json "$JUDGE/classifier_domains.json"
