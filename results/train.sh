#!/usr/bin/env bash
# Train the shipped models with relperf-train, in Rust, resumably: each call
# starts a run or continues it from its checkpoints/last.ckpt, so a long
# budget can be spent across sessions (CPU) or in one (GPU, EVAL-free).
#
#   bash results/train.sh                                  # all ten: 5 models x MNIST, FashionMNIST
#   bash results/train.sh MNIST/ExactRelativePerformer     # some of them
#   BUDGET=00:02:00:00 bash results/train.sh MNIST/Performer
#
# The recipe is the one of the imported runs (results/pretrained/*/*/config.json,
# "command"): dim 32, depth 4, heads 4, batch 64, Adam 1e-3 with the noam
# schedule (warm-up 500 steps), features redrawn every 1000 steps, a
# validation every 500 steps, early stopping after 40 validations without a
# better accuracy, seed 1; but with the whole validation split (5000 images)
# in each validation, for a learning curve worth reading, and the budget below
# instead of their 5 GPU minutes.
#
# Environment (all optional):
#   RUNS          parent of the run folders RUNS/DATASET/MODEL (default runs)
#   BUDGET        total training time of each run, DD:HH:MM:SS, summed over
#                 its sessions (default 00:08:00:00); a run that has spent it
#                 is skipped; raise it to go on
#   TRAIN_ARGS    more options for every call, e.g. "--backend wgpu" (runtime
#                 options only once a run exists: budgets, limits, logging,
#                 backend)
#   RELPERF_TRAIN the binary (default: built here with cargo build --release)
#
# Then: the learning curves beside the imported runs' (the figure and CSV
# of results/README.md),
#   relperf-eval plot-curves RUNS results/pretrained --output results/curves.svg --csv results/curves.csv
# and, to ship a run that beats the shipped one, bash results/ship.sh
# RUNS/DATASET/MODEL (best.mpk, config.json, metrics.csv, results.json into
# results/pretrained/DATASET/MODEL; not last.ckpt), then bash results/make.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-runs}"
budget="${BUDGET:-00:08:00:00}"
read -r -a extra <<< "${TRAIN_ARGS:-}"

if [ -z "${RELPERF_TRAIN:-}" ]; then
  echo "== building relperf-train (cargo build --release -p relperf-train-cli)" >&2
  cargo build --release --quiet -p relperf-train-cli
  RELPERF_TRAIN="${CARGO_TARGET_DIR:-target}/release/relperf-train"
fi
[ -x "$RELPERF_TRAIN" ] || { echo "error: $RELPERF_TRAIN is not an executable; set RELPERF_TRAIN or build with cargo build --release -p relperf-train-cli" >&2; exit 1; }

models=(Performer NoposPerformer RelativePerformer ClippedRelativePerformer ExactRelativePerformer)
jobs=("$@")
if [ ${#jobs[@]} -eq 0 ]; then
  for d in MNIST FashionMNIST; do for m in "${models[@]}"; do jobs+=("$d/$m"); done; done
fi
for job in "${jobs[@]}"; do
  case "$job" in
    MNIST/*|FashionMNIST/*) ;;
    *) echo "error: '$job' is not DATASET/MODEL (MNIST or FashionMNIST, then one of ${models[*]})" >&2; exit 2 ;;
  esac
  model="${job#*/}"
  [[ " ${models[*]} " == *" $model "* ]] || { echo "error: unknown model '$model' in '$job'; choose one of ${models[*]}" >&2; exit 2; }
done

for job in "${jobs[@]}"; do
  dataset="${job%%/*}"
  model="${job#*/}"
  dir="$runs/$dataset/$model"
  if [ -f "$dir/checkpoints/last.ckpt" ]; then
    printf '\n== %s: continuing %s (budget %s in all)\n' "$job" "$dir" "$budget" >&2
    cmd=("$RELPERF_TRAIN" --resume "$dir" --max-time "$budget" "${extra[@]}")
  elif [ -e "$dir" ]; then
    echo "error: $dir exists but has no checkpoints/last.ckpt to continue from; start a new run from its best weights with relperf-train --init-from $dir, or move it away" >&2
    exit 1
  else
    printf '\n== %s: a new run in %s (budget %s)\n' "$job" "$dir" "$budget" >&2
    cmd=("$RELPERF_TRAIN" "$model" "$dataset" --log-path "$runs" --exp-name "$dataset" --version "$model"
      --dim 32 --depth 4 --heads 4 --batch-size 64 --learning-rate 1e-3 --schedule noam --warmup 500
      --feature-redraw-interval 1000 --val-check-interval 500 --patience 40 --seed 1
      --max-time "$budget" "${extra[@]}")
  fi
  echo "${cmd[*]}" >&2
  set +e
  "${cmd[@]}"
  rc=$?
  set -e
  case $rc in
    0) ;;
    2) if [ -f "$dir/results.json" ]; then echo "== $job: finished, not continued (the line above says why: a spent budget, raise BUDGET; or early stopping)" >&2; else exit 2; fi ;;
    *) echo "== $job: relperf-train stopped with exit code $rc; rerun this script to continue it" >&2; exit "$rc" ;;
  esac
done
