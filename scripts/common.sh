# Sourced by the other scripts: the venv, the build caches and the extension build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Build caches live outside the clone so that a fresh clone reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/byol-rs/target}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

ensure_venv() {
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate  # torch-sys finds torch through the active venv (NOTES.md)
  local stamp
  stamp=".venv/.requirements-$(cat requirements-dev.txt requirements-nodeps.txt | sha1sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    pip install --upgrade pip >/dev/null
    pip install -r requirements-dev.txt
    pip install --no-deps -r requirements-nodeps.txt
    touch "$stamp"
  fi
}

ensure_fashion_mnist() {
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update >/dev/null 2>&1 && apt-get install -y dataset-fashion-mnist >/dev/null 2>&1; } ||
      echo "note: could not install dataset-fashion-mnist; tests that need it will skip"
  fi
}

build_extension() {
  # cargo is incremental: with nothing changed this rebuilds nothing.
  maturin develop --release --quiet
}
