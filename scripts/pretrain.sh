#!/usr/bin/env bash
# Train the runs shipped in pretrained/, or continue them, then export the finished ones.
#   scripts/pretrain.sh RUNS_DIR MAX_TIME [extra train options...]
# e.g. scripts/pretrain.sh ~/pretrain-runs 00:02:00:00          (on this 2-core CPU: hours)
#      scripts/pretrain.sh ~/pretrain-runs 00:00:10:00 --accelerator gpu
# Every (dataset, model) run is trained in RUNS_DIR/DATASET/MODEL, all in parallel. A run that
# already exists is resumed with `train --resume` (processes do not outlive a session): MAX_TIME
# is its total training time, over all sessions. A run stopped by MAX_TIME is exported as it is;
# give a larger MAX_TIME to train it further. Exports go to PRETRAINED/DATASET/MODEL with
# `relative-performer export` (weights only); the exact train command and seed of each run are
# in its config.json. Extra options go to every `train`: new runs take any (e.g. --batch_size 64,
# as the shipped runs did on a GPU), resumed runs only trainer options (--accelerator, --precision,
# ...); their model and data settings are fixed by their run folder.
#   MODELS    (default: every registered model)   DATASETS (default: MNIST FashionMNIST)
#   PRETRAINED (default: pretrained)               PYTHON (default: .venv/bin/python)
set -u
cd "$(dirname "$0")/.."
runs="${1:?usage: scripts/pretrain.sh RUNS_DIR MAX_TIME [train options]}"
max_time="${2:?MAX_TIME as DD:HH:MM:SS}"
shift 2
python="${PYTHON:-.venv/bin/python}"
rp=("$python" -m relative_performer)
models="${MODELS:-$("$python" -c 'from relative_performer.models import MODELS; print(*MODELS)')}"
datasets="${DATASETS:-MNIST FashionMNIST}"
pretrained="${PRETRAINED:-pretrained}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONUNBUFFERED=1
mkdir -p "$runs/logs"

for dataset in $datasets; do
  for model in $models; do
    run="$runs/$dataset/$model"
    log="$runs/logs/$dataset-$model.log"
    if [ -f "$run/checkpoints/last.ckpt" ]; then
      # finished runs are trained further only when stopped by time and given more of it
      "$python" - "$run/results.json" "$max_time" <<'PY' || continue
import json, sys
try:
    results = json.load(open(sys.argv[1]))
except FileNotFoundError:
    sys.exit(0)
d, h, m, s = map(int, sys.argv[2].split(":"))
budget = ((d * 24 + h) * 60 + m) * 60 + s
sys.exit(0 if results.get("stopped_by") == "max_time" and budget > results["train_seconds"] + 60 else 1)
PY
      "${rp[@]}" train --resume "$run" --max_time "$max_time" --no_progress_bar "$@" >> "$log" 2>&1 &
    else
      rm -rf "$run"  # a run killed before its first checkpoint starts again
      "${rp[@]}" train "$model" "$dataset" --log_path "$runs" --exp_name "$dataset" --version "$model" \
        --dim 32 --depth 4 --heads 4 --batch_size 32 --learning_rate 1e-3 --schedule noam --warmup 500 \
        --feature_redraw_interval 1000 --val_check_interval 500 --limit_val_batches 40 --patience 40 \
        --seed 1 --max_time "$max_time" --no_progress_bar "$@" > "$log" 2>&1 &
    fi
  done
done
wait

echo "== exporting the finished runs to $pretrained (in parallel)"
for dataset in $datasets; do
  for model in $models; do
    run="$runs/$dataset/$model"
    [ -f "$run/results.json" ] || { echo "$run has not finished (see $runs/logs/$dataset-$model.log)"; continue; }
    rm -rf "${pretrained:?}/$dataset/$model"
    "${rp[@]}" export "$run" "$pretrained/$dataset/$model" &
  done
done
wait
