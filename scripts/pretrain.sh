#!/usr/bin/env bash
# Train the runs shipped in pretrained/: every registered model on MNIST and FashionMNIST,
# all in parallel on one machine (made on one GPU; works on CPU, slowly), then evaluate them.
#   scripts/pretrain.sh OUT_DIR MAX_TIME [extra train options...]
# e.g. scripts/pretrain.sh pretrained 00:00:05:00 --accelerator gpu
# The exact command of each run is recorded in its config.json.
set -u
out="${1:?usage: scripts/pretrain.sh OUT_DIR MAX_TIME [train options]}"
max_time="${2:?MAX_TIME as DD:HH:MM:SS}"
shift 2
python="${PYTHON:-python3}"
rp=("$python" -m relative_performer)
models="${MODELS:-$("$python" -c 'from relative_performer.models import MODELS; print(*MODELS)')}"
datasets="${DATASETS:-MNIST FashionMNIST}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONUNBUFFERED=1
mkdir -p "$out/logs"
for dataset in $datasets; do
  for model in $models; do
    "${rp[@]}" train "$model" "$dataset" --log_path "$out" --exp_name "$dataset" --version "$model" \
      --dim 64 --depth 2 --heads 4 --batch_size 32 --learning_rate 2e-3 --schedule noam --warmup 500 \
      --feature_redraw_interval 100 --val_check_interval 500 --limit_val_batches 40 --patience 40 --seed 1 --max_time "$max_time" --no_progress_bar "$@" \
      > "$out/logs/$dataset-$model.log" 2>&1 &
  done
done
wait
echo "== trained"; tail -n 2 "$out"/logs/*.log
