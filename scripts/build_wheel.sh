#!/usr/bin/env bash
# Builds the wheel for the GPU machine (or any x86-64 Linux with torch==2.11.0 installed) into dist/:
#
#   scripts/build_wheel.sh
#
# dist/byol_rs-<version>-cp39-abi3-linux_x86_64.whl: one abi3 wheel (CPython 3.9 and later, so the
# GPU machine's 3.12 too) that links the libtorch of the torch installed beside it through a relative
# rpath; `--auditwheel skip` keeps maturin from bundling libtorch and CUDA into it.
# dist/gpu-deps/lightly-1.6.0-py3-none-any.whl: lightly's pure-Python wheel, for the per-image
# augmentation baseline of benches/gpu/run.sh (the GPU machine has everything it imports but lightly
# itself). Fetching it is best effort: without it that one benchmark row is skipped with a reason.
#
# Then, on the GPU machine, with dist carried: bash benches/gpu/run.sh --wheel dist/byol_rs-*.whl --out $OUT
source "$(dirname "$0")/common.sh"
ensure_venv  # torch-sys finds libtorch through the active venv's torch
rm -f dist/byol_rs-*.whl
# Relink: `maturin develop` patches the shared artifact's rpath with absolute build paths.
touch src/lib.rs
maturin build --release --compatibility linux --auditwheel skip -o dist/
mkdir -p dist/gpu-deps
if ! ls dist/gpu-deps/lightly-1.6.0-*.whl >/dev/null 2>&1; then
  pip download --quiet --no-deps --only-binary=:all: -d dist/gpu-deps lightly==1.6.0 ||
    echo "note: could not fetch lightly's wheel; the lightly row of benches/gpu/run.sh will be skipped"
fi
ls -l dist/*.whl dist/gpu-deps/
