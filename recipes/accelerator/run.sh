#!/usr/bin/env bash
# The accelerator run of issue 15, THERE (the H200 machine of the device tool): train DAO-G on the tensor
# file that recipes/accelerator/prepare_data.py wrote HERE, within BUDGET seconds, and leave the log and the
# fp16 checkpoint chunks in $OUT. recipes/accelerator/README.md gives the exact `run` call and what to do
# with the files that come back. Needs only what that machine has (python3 with torch and numpy); the
# log under $OUT records the torch and CUDA versions and the GPU.
#
#   OUT=/tmp/out BUDGET=480 bash recipes/accelerator/run.sh [extra train_on_device.py options]
set -euo pipefail
: "${OUT:?set OUT (the device tool sets it)}"
BUDGET="${BUDGET:-480}"
DATA="${DATA:-.accel/train_set.npz}"
PY="${PY:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
[[ -f "$DATA" ]] || { echo "run.sh: no $DATA (carry .accel; prepare it with prepare_data.py)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
# stdout and stderr go to the reply (its last 12,000 characters); the JSON log under $OUT holds everything
exec "$PY" recipes/accelerator/train_on_device.py --data "$DATA" --out "$OUT" --budget-seconds "$BUDGET" "$@"
