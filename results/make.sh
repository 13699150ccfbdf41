#!/usr/bin/env bash
# Evaluate the shipped runs (results/pretrained) with the Rust binaries into
# results/, then write results/table.md and the README's results section.
#
#   bash results/make.sh        # 22 to 28 minutes on a 2-core CPU (ndarray), the build excluded
#
# Writes, every file with `relperf-eval` (bins/relperf-eval):
#   results/test.csv               test-recursive: validation and test accuracy of every run
#   results/shifted-label1-x.csv   test-shifted, label 1, shifts -8..8 along x (the paper's protocol)
#   results/shifted-all-x.csv      test-shifted, all labels, -8..8 along x
#   results/shifted-all-y.csv      test-shifted, all labels, -4..4 along y (digits have about 4 free rows)
#   results/feature-draws-x.csv    the MNIST relative models with their own features and 5 fresh draws
#   results/equivariance.csv       the equivariance probe (random weights, periodic positions)
#   results/shifted-label1-x.{svg,png}, results/shifted-all.{svg,png}   plot-shifted of the CSVs
#   results/curves.{csv,svg,png}   plot-curves: learning curves of results/training (runs trained
#                  here by results/train.sh, if present) beside the shipped runs' and those of
#                  results/reference/first-runs and results/reference/replaced
#   results/table.md               the tables (results/table.py), also put into README.md
#   results/make.json              how and when: the commit, the options, the machine, each step's time
#
# Environment (all optional):
#   SHIFT_IMAGES   images per run in every test-shifted call: the first N that
#                  qualify (default 300, as in results/reference; "all" for every one)
#   EVAL_ARGS      more options for every evaluation, e.g. "--backend wgpu --batch-size 256"
#   LIMIT_BATCHES  test-recursive evaluates only this many batches per split (a quick check;
#                  the tables then say so in the images column)
#   RUNS           the folder of runs (default results/pretrained)
#   TRAINING       the folder of runs trained here whose learning curves are drawn (default results/training)
#   OUT            where the files go (default results)
#   RELPERF_EVAL   the binary to use (default: built here with `cargo build --release`)
#   README         the file whose results section is replaced (default README.md)
# Every step prints its command and its time; a failed step stops the script
# (files of earlier steps stay; each CSV is written atomically).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-results/pretrained}"
out="${OUT:-results}"
images="${SHIFT_IMAGES:-300}"
read -r -a extra <<< "${EVAL_ARGS:-}"

export RELPERF_EVAL_GIVEN="${RELPERF_EVAL:-}"
if [ -z "${RELPERF_EVAL:-}" ]; then
  echo "== building relperf-eval (cargo build --release -p relperf-eval-cli)" >&2
  cargo build --release --quiet -p relperf-eval-cli
  target="${CARGO_TARGET_DIR:-target}"
  RELPERF_EVAL="$target/release/relperf-eval"
fi
[ -x "$RELPERF_EVAL" ] || { echo "error: $RELPERF_EVAL is not an executable; set RELPERF_EVAL or build with cargo build --release -p relperf-eval-cli" >&2; exit 1; }
[ -d "$runs" ] || { echo "error: no run folder '$runs'; set RUNS to a folder of runs" >&2; exit 1; }
mkdir -p "$out"

cap=()
if [ "$images" != "all" ]; then cap=(--max-images "$images"); fi
limit=()
if [ -n "${LIMIT_BATCHES:-}" ]; then limit=(--limit-batches "$LIMIT_BATCHES"); fi

started=$SECONDS
start_date=$(date -u +"%Y-%m-%d %H:%M UTC")
# the commit evaluated, taken now (a commit made while this runs is not it),
# and whether anything but the files this script writes differs from it
# (code, weights, reference CSVs); glob: `*` stays within results/
export MAKE_COMMIT MAKE_DIRTY
MAKE_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
MAKE_DIRTY=$(git status --porcelain --untracked-files=no -- . ':!README.md' \
  ':(exclude,glob)results/*.csv' ':(exclude,glob)results/*.svg' ':(exclude,glob)results/*.png' \
  ':!results/table.md' ':!results/make.json' 2>/dev/null || true)
steps=()
step() { # step CMD...: print it, run it, print its time
  local t0=$SECONDS
  printf '\n== relperf-eval %s\n' "$*" >&2
  "$RELPERF_EVAL" "$@"
  local output="" prev=""
  for arg in "$@"; do if [ "$prev" = --output ]; then output=$arg; fi; prev=$arg; done
  steps+=("$1|$output|$((SECONDS - t0))")
  printf '== done in %d s (%d s in all)\n' $((SECONDS - t0)) $((SECONDS - started)) >&2
}

step test-recursive "$runs" "${limit[@]}" "${extra[@]}" --output "$out/test.csv"
step test-shifted "$runs" --labels 1 --min-shift 8 "${cap[@]}" "${extra[@]}" --output "$out/shifted-label1-x.csv"
step test-shifted "$runs" --labels all --min-shift 8 "${cap[@]}" "${extra[@]}" --output "$out/shifted-all-x.csv"
step test-shifted "$runs" --labels all --min-shift 4 --axis y "${cap[@]}" "${extra[@]}" --output "$out/shifted-all-y.csv"
relative=()
for model in RelativePerformer ExactRelativePerformer; do
  if [ -d "$runs/MNIST/$model" ]; then relative+=("$runs/MNIST/$model"); fi
done
if [ ${#relative[@]} -gt 0 ]; then
  step test-shifted "${relative[@]}" --labels all --min-shift 8 --feature-seed 1 2 3 4 5 "${cap[@]}" "${extra[@]}" \
    --output "$out/feature-draws-x.csv"
fi
step equivariance --output "$out/equivariance.csv"
for ext in svg png; do
  step plot-shifted "$out/shifted-label1-x.csv" --output "$out/shifted-label1-x.$ext" \
    --title "Shipped models, label 1 shifted along x"
  step plot-shifted "$out/shifted-all-x.csv" "$out/shifted-all-y.csv" --output "$out/shifted-all.$ext" \
    --title "Shipped models, all labels, shifted along x and y"
done
# learning curves: the runs trained here by results/train.sh (results/training)
# beside the shipped ones
training="${TRAINING:-results/training}"
# the reference's from-scratch run that a shipped run continued, and the
# imported runs that runs trained in Rust replaced
first_runs=()
for d in results/reference/first-runs results/reference/replaced; do
  if [ -d "$d" ]; then first_runs+=("$d"); fi
done
if [ -d "$training" ]; then
  title="Learning curves: validation accuracy against training images"
  step plot-curves "$training" "$runs" "${first_runs[@]}" --csv "$out/curves.csv" --output "$out/curves.svg" --title "$title"
  step plot-curves "$training" "$runs" "${first_runs[@]}" --output "$out/curves.png" --title "$title"
fi
python3 - "$out/make.json" "$start_date" "$((SECONDS - started))" "$images" "${EVAL_ARGS:-}" "${LIMIT_BATCHES:-}" "${steps[@]}" <<'PY'
import json, os, sys
path, start, seconds, images, eval_args, limit, *steps = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({
    "command": "bash results/make.sh",
    "commit": os.environ["MAKE_COMMIT"],
    # changes to the code or the runs when it started, not to what this script writes
    "uncommitted_changes": bool(os.environ["MAKE_DIRTY"]),
    "started": start, "seconds": int(seconds),
    "shift_images": images, "eval_args": eval_args, "limit_batches": limit or None,
    "machine": {"cpu": cpu, "cores": os.cpu_count()},
    "binary": os.environ.get("RELPERF_EVAL_GIVEN") or "built from this commit",
    "steps": [{"command": c, "output": o, "seconds": int(t)} for c, o, t in (s.split("|") for s in steps)],
}, open(path, "w"), indent=2)
PY
python3 results/table.py "$out" --readme "${README:-README.md}"
echo "== results/make.sh: done in $((SECONDS - started)) s" >&2
