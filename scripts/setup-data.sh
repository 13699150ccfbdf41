#!/usr/bin/env bash
# Fetch and verify the data sets named as arguments (default: MNIST FashionMNIST).
# FashionMNIST comes from Debian's dataset-fashion-mnist package when there is no internet:
# install it when we are root on a Debian-like machine and it is missing.
set -euo pipefail
venv="${VENV:-.venv}"
names=("${@:-MNIST FashionMNIST}")
# shellcheck disable=SC2068
for name in ${names[@]}; do
  if [ "$name" = FashionMNIST ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
     && [ ! -d "${RELATIVE_PERFORMER_DATA:-data}/FashionMNIST/raw" ] \
     && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo ">> installing Debian's dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo ">> could not install dataset-fashion-mnist; falling back to torchvision's download"
  fi
  "$venv/bin/relative-performer" data fetch "$name"
  "$venv/bin/relative-performer" data verify "$name"
done
