#!/usr/bin/env bash
# README command 1: set everything up on a fresh machine, build, and run the main job.
source "$(dirname "$0")/common.sh"
ensure_venv
ensure_fashion_mnist
build_extension
if [ $# -eq 0 ]; then set -- train --force; fi
python -m byol_rs "$@"
