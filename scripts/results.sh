#!/usr/bin/env bash
# Evaluate the runs in pretrained/ into results/ and refresh the README's results table.
#   scripts/results.sh            (about 2 minutes on an H200 for ten runs; see SHIFT_IMAGES for a CPU)
# Writes, with the project's own commands:
#   results/test.csv                 test-recursive: val and test accuracy of every run
#   results/shifted-label1-x.csv     test-shifted, label 1, shifts -8..8 along x (the paper's protocol)
#   results/shifted-all-x.csv        test-shifted, all labels, -8..8 along x
#   results/shifted-all-y.csv        test-shifted, all labels, -4..4 along y (MNIST digits have ~4 free rows), first 2000
#   results/feature-draws-x.csv      MNIST relative models, own features and 5 fresh draws, first 1000
#   results/shifted.png              plot-shifted of shifted-label1-x.csv
#   results/shifted-all.png          plot-shifted of the all-label CSVs
#   results/table.md                 the tables, also put into README.md
#   VENV (default .venv)   PYTHON (default $VENV/bin/python)   PRETRAINED (default pretrained)
#   RESULTS (default results)   README (default README.md: the file whose results block is replaced)
#   EVAL_ARGS (more options for every test command, e.g. "--batch_size 1024")
#   SHIFT_IMAGES (default: all qualifying images): at most this many images per run in every
#   test-shifted (the y-axis and feature-draw tests take at most 2000 and 1000 anyway); on a
#   2-core CPU, SHIFT_IMAGES=300 keeps the whole script at about half an hour for ten runs
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
python="${PYTHON:-$venv/bin/python}"
read -r -a extra <<< "${EVAL_ARGS:-}"
rp() { "$python" -m relative_performer "$@" "${extra[@]}"; }
src="${PRETRAINED:-pretrained}"
out="${RESULTS:-results}"
mkdir -p "$out"
cap() { # cap DEFAULT: the --max_images option for a test-shifted call (none when neither is set)
  local n="${SHIFT_IMAGES:-$1}"
  if [ -n "$1" ] && [ -n "${SHIFT_IMAGES:-}" ] && [ "$1" -lt "$SHIFT_IMAGES" ]; then n=$1; fi
  if [ -n "$n" ]; then echo "--max_images $n"; fi
}

rp test-recursive "$src" --output "$out/test.csv"
rp test-shifted "$src" --labels 1 --min_shift 8 $(cap "") --output "$out/shifted-label1-x.csv"
rp test-shifted "$src" --labels all --min_shift 8 $(cap "") --output "$out/shifted-all-x.csv"
rp test-shifted "$src" --labels all --min_shift 4 --axis y $(cap 2000) --output "$out/shifted-all-y.csv"
relative=()
for model in RelativePerformer ExactRelativePerformer; do
  [ -d "$src/MNIST/$model" ] && relative+=("$src/MNIST/$model")
done
if [ ${#relative[@]} -gt 0 ]; then
  rp test-shifted "${relative[@]}" --labels all --min_shift 8 --feature_seed 1 2 3 4 5 $(cap 1000) \
    --output "$out/feature-draws-x.csv"
fi
"$python" -m relative_performer plot-shifted "$out/shifted-label1-x.csv" --output "$out/shifted.png" \
  --title "Pretrained models, label 1 shifted along x"
"$python" -m relative_performer plot-shifted "$out/shifted-all-x.csv" "$out/shifted-all-y.csv" --output "$out/shifted-all.png" \
  --title "Pretrained models, all labels"
"$python" scripts/results_table.py "$out" --readme "${README:-README.md}"
