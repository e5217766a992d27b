#!/usr/bin/env bash
# README command 2: every test, Rust engine (cargo test) and Python API (pytest).
source "$(dirname "$0")/common.sh"
ensure_venv
ensure_fashion_mnist
build_extension
cargo test --release --quiet  # release: the vector-width tests need the optimiser's vectorised code
python -m pytest -q "$@"
