#!/usr/bin/env bash
# The main job (`make demo`): train a small RelativePerformer on MNIST from scratch for a few
# minutes with the project's own `train` command, then test it on the test split and on
# shifted digits, draw the shift figure and print a table.
#   DEMO_MINUTES (default 4)   training wall time
#   DEMO_OUT (default runs/demo)  where the run, CSVs and figure go
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
rp="$venv/bin/relative-performer"
out="${DEMO_OUT:-runs/demo}"
minutes="${DEMO_MINUTES:-4}"
max_time=$(printf '00:00:%02d:%02d' "$((minutes))" 0)

echo "== 1/3 training a small RelativePerformer on MNIST for $minutes minutes"
"$rp" train RelativePerformer MNIST --log_path "$out" --exp_name RelativePerformer \
  --dim 32 --depth 2 --heads 4 --batch_size 32 --warmup 100 --feature_redraw_interval 100 \
  --max_time "$max_time" --val_check_interval 300 --limit_val_batches 40 --limit_test_batches 100 \
  --seed 1 ${DEMO_TRAIN_ARGS:-}
run=$(ls -td "$out"/RelativePerformer/*/ | head -1)

echo "== 2/3 testing $run on test digits shifted by -8..8 pixels (all labels)"
"$rp" test-shifted "$run" --labels all --min_shift 8 --output "$out/shifted.csv" ${DEMO_SHIFT_ARGS:-}
"$rp" plot-shifted "$out/shifted.csv" --output "$out/shifted.png"

echo "== 3/3 results"
"$venv/bin/python" - "$run" "$out/shifted.csv" <<'PY'
import json, sys
import pandas as pd
run, csv = sys.argv[1], sys.argv[2]
results = json.load(open(f"{run}/results.json"))
print(f"test accuracy (first 3200 test images): {results['test_acc']:.3f} "
      f"after {results['global_step']} steps ({results['train_seconds']:.0f} s)")
table = pd.read_csv(csv)
table = table[table.feature_seed.isna()] if "feature_seed" in table else table
print("accuracy on shifted digits:")
print(table.pivot_table(index="model", columns="shift", values="accuracy_mean").round(2).to_string())
PY
echo "figure: $out/shifted.png"
