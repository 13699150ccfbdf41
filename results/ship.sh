#!/usr/bin/env bash
# Ship a run trained in Rust in place of the shipped run of its dataset and
# model, if it beats it on the test split:
#
#   bash results/ship.sh RUN_DIR          # e.g. runs/MNIST/ClippedRelativePerformer
#   FORCE=1 bash results/ship.sh RUN_DIR  # ship it even if it does not beat it
#
# RUN_DIR is a finished run of relperf-train (results/train.sh): config.json,
# metrics.csv, results.json and checkpoints/best.mpk (a stopped run gets its
# results.json from `relperf-train --finish RUN_DIR`). Its dataset and model
# come from results.json. When the shipped run it replaces was imported from
# the PyTorch reference, that run's config.json, metrics.csv and results.json
# are kept in results/reference/replaced/DATASET/MODEL (results/make.sh still
# draws its learning curve; its weights stay in git history). The run's files,
# not last.ckpt, go to results/pretrained/DATASET/MODEL; a copy of it under
# results/training is removed. Then: say how it was trained in
# results/pretrained/README.md and results/reference/replaced/README.md, run
# `cargo test --release -p relperf-models --test pretrained`, and remake the
# results with `bash results/make.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 1 ] || { echo "usage: bash results/ship.sh RUN_DIR" >&2; exit 2; }
run="${1%/}"
for f in config.json metrics.csv results.json checkpoints/best.mpk; do
  [ -f "$run/$f" ] || { echo "error: $run/$f is missing: ship a finished run (relperf-train --finish $run ends a stopped one)" >&2; exit 1; }
done
size=$(stat -c %s "$run/checkpoints/best.mpk")
[ "$size" -le 5000000 ] || { echo "error: $run/checkpoints/best.mpk is $size bytes; shipped records are at most 5 MB" >&2; exit 1; }

# dataset, model and test accuracy of the run; the shipped run's accuracy,
# whether the run beats it (1/0) and whether that one was imported (1/0)
read -r dataset model test_acc shipped beats imported < <(python3 - "$run" <<'EOF'
import json, sys
from pathlib import Path
r = json.loads(Path(sys.argv[1], "results.json").read_text())
dataset, model, acc = r.get("dataset", "-"), r.get("model", "-"), r.get("test_acc")
dest = Path("results/pretrained", str(dataset), str(model))
shipped = json.loads((dest / "results.json").read_text()).get("test_acc", 0) if (dest / "results.json").is_file() else None
imported = (dest / "config.json").is_file() and "imported" in json.loads((dest / "config.json").read_text())
beats = acc is not None and (shipped is None or float(acc) > float(shipped))
print(dataset, model, "-" if acc is None else acc, "-" if shipped is None else shipped, int(beats), int(imported))
EOF
)
case "$dataset" in MNIST|FashionMNIST) ;; *) echo "error: $run/results.json names dataset '$dataset'; results/pretrained holds MNIST and FashionMNIST" >&2; exit 1 ;; esac
[ "$model" != - ] && [ "$test_acc" != - ] || { echo "error: $run/results.json has no model or test_acc" >&2; exit 1; }

dest="results/pretrained/$dataset/$model"
[ "$(realpath "$run")" != "$(realpath -m "$dest")" ] || { echo "error: $run is already the shipped run" >&2; exit 1; }
if [ "$shipped" != - ]; then
  if [ "$beats" != 1 ] && [ -z "${FORCE:-}" ]; then
    echo "error: $run scores $test_acc on the test split, the shipped $dataset/$model $shipped: not shipped (FORCE=1 ships it anyway)" >&2
    exit 1
  fi
  if [ "$imported" = 1 ]; then
    keep="results/reference/replaced/$dataset/$model"
    mkdir -p "$keep"
    cp "$dest/config.json" "$dest/metrics.csv" "$dest/results.json" "$keep/"
    echo "kept the imported run's config.json, metrics.csv, results.json in $keep (weights: git show $(git rev-parse --short HEAD):$dest/checkpoints/best.mpk)"
  fi
  echo "replacing $dest (test $shipped) by $run (test $test_acc)"
  git rm -rq --ignore-unmatch "$dest"
  rm -rf "$dest"
fi
mkdir -p "$dest/checkpoints"
cp "$run/config.json" "$run/metrics.csv" "$run/results.json" "$dest/"
cp "$run/checkpoints/best.mpk" "$dest/checkpoints/"
case "$(realpath "$run")" in
  "$(realpath results/training)"/*) git rm -rq --ignore-unmatch "$run"; rm -rf "$run"; echo "removed $run (now $dest)" ;;
esac
git add "$dest" results/reference/replaced
echo "shipped $dest; next: the READMEs (results/pretrained, results/reference/replaced), cargo test --release -p relperf-models --test pretrained, bash results/make.sh"
