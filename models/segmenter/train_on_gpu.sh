#!/usr/bin/env bash
# Model 1 on a lent GPU machine (PyTorch there, no TensorFlow or SimpleITK; docs/model1.md, "Training on a
# lent GPU"). Run in the repository root THERE, after `python -m training.segmenter_bundle pack` made
# BUNDLE here and keras (+ namex, optree) travelled as wheels in .whl/:
#   models/segmenter/train_on_gpu.sh BUNDLE OUT MINUTES [fit options, e.g. --hypodense-weight 5]
# A 20-step pilot measures the step rate; the run then gets as many steps as fit in MINUTES (validation
# included), so its cosine schedule ends where the time does. Writes OUT/model.keras, OUT/fitted.json,
# OUT/log.txt; `python -m training.segmenter_bundle finish` here turns them into a model directory.
set -euo pipefail
BUNDLE=$1 OUT=$2 MINUTES=$3; shift 3
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=torch PYTHONUNBUFFERED=1
mkdir -p "$OUT"
EPOCHS=${EPOCHS:-12}
PILOT=$(mktemp -d)   # one per run: two runs side by side must not share it
python3 -m training.segmenter_bundle fit --bundle "$BUNDLE" --out "$PILOT" --epochs 2 --steps-per-epoch 20 "$@" \
  > "$OUT/pilot.txt" 2>&1 || { cat "$OUT/pilot.txt"; exit 1; }
STEPS=$(python3 - "$MINUTES" "$EPOCHS" "$PILOT" <<'PY'
import json, sys
h = json.load(open(sys.argv[3] + "/fitted.json"))["fitted"]["history"][-1]   # the warm second epoch
step, val = h["train_seconds"] / 20, h["seconds"] - h["train_seconds"]
minutes, epochs = float(sys.argv[1]), int(sys.argv[2])
print(max(20, int((minutes * 60 / epochs - val) / step)))
PY
)
echo "pilot: $(tail -n 3 "$OUT/pilot.txt" | head -n 1); $EPOCHS epochs x $STEPS steps" | tee "$OUT/log.txt"
python3 -m training.segmenter_bundle fit --bundle "$BUNDLE" --out "$OUT" --epochs "$EPOCHS" --steps-per-epoch "$STEPS" "$@" \
  2>&1 | tee -a "$OUT/log.txt"
