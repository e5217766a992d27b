#!/usr/bin/env bash
# README command 2: every test, Rust engine (cargo test) and Python API (pytest).
source "$(dirname "$0")/common.sh"
ensure_venv
ensure_fashion_mnist
build_extension
cargo test --release --quiet  # release: the vector-width tests need the optimiser's vectorised code
# the hand-written stub must match the compiled module (argument names, defaults, classes)
python -m mypy.stubtest byol_rs._core --allowlist tests/stubtest-allowlist.txt
python -m pytest -q "$@"
