#!/usr/bin/env bash
# The main job (`make demo`), about 10 minutes on a 2-core CPU:
#  1. shift test of the shipped pretrained MNIST models (label 1, shifts -8..8 pixels along x),
#     the figure and a table: absolute positions (Performer) lose the shifted digits; the
#     exactly relative ExactRelativePerformer keeps them for any feature draw; RelativePerformer
#     keeps them as far as its training taught it to ignore the positions its features leak;
#  2. a small RelativePerformer trained from scratch for a few minutes with the project's own
#     `train` command, then tested, so that you see training work on your machine.
#   DEMO_MINUTES (default 5)       training wall time of step 2
#   DEMO_OUT (default runs/demo)   where the CSVs, figure and the new run go
#   DEMO_SHIFT_IMAGES (default 400) shifted digits per model in step 1 (MNIST has 855 that fit)
#   PRETRAINED (default pretrained)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
rp="$venv/bin/relative-performer"
python="$venv/bin/python"
out="${DEMO_OUT:-runs/demo}"
pretrained="${PRETRAINED:-pretrained}"
minutes="${DEMO_MINUTES:-5}"
max_time=$(printf '00:%02d:%02d:00' "$((minutes / 60))" "$((minutes % 60))")
mkdir -p "$out"

runs=()
for model in Performer RelativePerformer ExactRelativePerformer; do
  if [ -d "$pretrained/MNIST/$model" ]; then runs+=("$pretrained/MNIST/$model"); else echo "($pretrained/MNIST/$model is missing: skipped)"; fi
done
if [ ${#runs[@]} -gt 0 ]; then
  echo "== 1/3 pretrained models on MNIST test digits '1' shifted by -8..8 pixels"
  "$rp" test-shifted "${runs[@]}" --labels 1 --min_shift 8 --max_images "${DEMO_SHIFT_IMAGES:-400}" \
    --output "$out/pretrained-shifted.csv" ${DEMO_SHIFT_ARGS:-}
  "$rp" plot-shifted "$out/pretrained-shifted.csv" --output "$out/pretrained-shifted.png" \
    --title "Pretrained models: MNIST '1's shifted along x"
  "$python" - "$out/pretrained-shifted.csv" <<'PY'
import sys
import pandas as pd
table = pd.read_csv(sys.argv[1])
table = table[table["shift"] % 2 == 0]
print("accuracy (%) on shifted digits:")
print((100 * table.pivot_table(index="model", columns="shift", values="accuracy_mean", sort=False)).round(1).to_string())
PY
  echo "figure: $out/pretrained-shifted.png"
fi

echo "== 2/3 training a small RelativePerformer on MNIST from scratch for $minutes minutes"
rm -rf "$out/scratch/RelativePerformer"
"$rp" train RelativePerformer MNIST --log_path "$out/scratch" --exp_name RelativePerformer --version 0 \
  --dim 32 --depth 2 --heads 4 --batch_size 32 --learning_rate 1e-3 --warmup 150 --feature_redraw_interval 1000 \
  --max_time "$max_time" --val_check_interval 300 --limit_val_batches 40 --limit_test_batches 0 \
  --seed 1 ${DEMO_TRAIN_ARGS:-}
run="$out/scratch/RelativePerformer/version_0"

echo "== 3/3 testing it on the test split"
"$rp" test "$run" --output "$out/scratch-test.csv" --limit_batches "${DEMO_TEST_BATCHES:-40}"
"$python" - "$run" "$out/scratch-test.csv" <<'PY'
import json, sys
import pandas as pd
results = json.load(open(f"{sys.argv[1]}/results.json"))
row = pd.read_csv(sys.argv[2]).iloc[0]
print(f"from scratch: {results['global_step']} steps in {results['train_seconds']:.0f} s, "
      f"test accuracy {100 * row['test_acc']:.1f}% on {int(row['test_n'])} test images (chance: 10%)")
PY
