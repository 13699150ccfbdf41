#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install torch + this package into it.
# Usage: scripts/setup-env.sh VENV_DIR
# Idempotent: a stamp keyed by pyproject.toml and this checkout's path skips work already done.
set -euo pipefail
venv="${1:-.venv}"
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
# torch is installed first and pinned: pip finds these wheels on the machines we develop on;
# elsewhere pip downloads them. Override with TORCH_SPEC="torch torchvision" for other versions.
torch_spec="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
deps_stamp="$venv/.deps-$( (cat "$here/pyproject.toml"; echo "$torch_spec") | sha1sum | cut -c1-12)"
pkg_stamp="$venv/.pkg-$(echo "$here" | sha1sum | cut -c1-12)"

if [ ! -x "$venv/bin/python" ]; then
  echo ">> creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
if [ ! -f "$deps_stamp" ]; then
  echo ">> installing $torch_spec and the dependencies (a few minutes the first time)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip 2>/dev/null || true
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet $torch_spec
  "$venv/bin/python" -m pip install --quiet -e "$here[test,tensorboard]"
  rm -f "$venv"/.deps-* "$venv"/.pkg-*
  touch "$deps_stamp" "$pkg_stamp"
fi
# The editable install points at one checkout: reinstall when it points elsewhere (another
# clone sharing this environment, or a deleted one), whatever stamps are left.
installed_from() {
  "$venv/bin/python" -I -c 'import importlib.util as u; s = u.find_spec("relative_performer"); print(s.origin if s and s.origin else "")' 2>/dev/null || true
}
if [ ! -f "$pkg_stamp" ] || [ "$(installed_from)" != "$here/relative_performer/__init__.py" ]; then
  echo ">> installing this checkout ($here) into $venv"
  "$venv/bin/python" -m pip install --quiet --no-deps -e "$here"
  rm -f "$venv"/.pkg-*
  touch "$pkg_stamp"
fi
