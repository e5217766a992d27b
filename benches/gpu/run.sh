#!/usr/bin/env bash
# Issue 6's GPU check in one call: installs the carried wheel, runs the CUDA tests, then every
# benchmark beside its PyTorch reference (benches/gpu/bench_gpu.py). Prints a table last; writes
# bench_gpu.json, bench.log, pytest.log and env.txt into --out.
#
#   bash benches/gpu/run.sh --wheel dist/byol_rs-*.whl --out $OUT   # GPU machine, dist/ carried; about 5 minutes
#   bash benches/gpu/run.sh --cpu-smoke --out /tmp/gpusmoke         # here: the same code on the CPU, tiny sizes
#
# Options: --deps DIR (extra wheels to install beside it, default <wheel's folder>/gpu-deps, where
# scripts/build_wheel.sh puts lightly's), --budget-s N (seconds for the whole call, default 345),
# --python PY (default $PYTHON or python3). The wheel goes into a fresh folder with
# `pip install --no-deps --target` and only that folder is put on PYTHONPATH, so byol_rs is the
# wheel's and never the repository's python/ folder (which has no compiled _core there).
# Exit status: 0 when the tests and every benchmark section ran without error.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
START=$SECONDS
WHEEL="" OUT="" SMOKE=0 DEPS="" BUDGET=345 PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) WHEEL=${2:-}; shift 2 || shift;;
    --out) OUT=${2:-}; shift 2 || shift;;
    --deps) DEPS=${2:-}; shift 2 || shift;;
    --budget-s) BUDGET=${2:-}; shift 2 || shift;;
    --python) PY=${2:-}; shift 2 || shift;;
    --cpu-smoke) SMOKE=1; shift;;
    -h|--help) sed -n '2,17p' "$0"; exit 0;;
    *.whl) echo "more than one wheel given ($WHEEL and $1): remove the old ones from dist/" >&2; exit 2;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
  esac
done
[ -n "$OUT" ] || { echo "--out DIR is required (see --help)" >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# libtorch's own warnings (the sync reports of ops the Rust engine calls) go to stderr at this level.
export TORCH_CPP_LOG_LEVEL=${TORCH_CPP_LOG_LEVEL:-WARNING}

if [ "$SMOKE" = 0 ]; then
  [ -n "$WHEEL" ] && [ -f "$WHEEL" ] || { echo "--wheel FILE is required: build it with scripts/build_wheel.sh and carry dist/" >&2; exit 2; }
  SITE=$(mktemp -d /tmp/byol_rs_site.XXXXXX)
  [ -n "$DEPS" ] || DEPS="$(dirname "$WHEEL")/gpu-deps"
  shopt -s nullglob
  WHEELS=("$WHEEL" "$DEPS"/*.whl)
  shopt -u nullglob
  echo "installing ${WHEELS[*]} into $SITE"
  if ! "$PY" -m pip install -q --no-deps --no-index --no-compile --disable-pip-version-check --target "$SITE" "${WHEELS[@]}"; then
    echo "pip install failed; unpacking the wheels instead"
    "$PY" - "$SITE" "${WHEELS[@]}" <<'EOF' || exit 3
import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
EOF
  fi
  export PYTHONPATH="$SITE"
  WHERE=$(cd /tmp && "$PY" -c "import byol_rs; print(byol_rs.__file__)") || { echo "the wheel's byol_rs does not import" >&2; exit 3; }
  case "$WHERE" in
    "$SITE"/*) echo "byol_rs imports from $WHERE";;
    *) echo "byol_rs imports from $WHERE, not from the wheel in $SITE" >&2; exit 3;;
  esac
fi

{
  date -u; uname -a; nproc
  nvidia-smi 2>&1 | head -25
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  "$PY" -c "import byol_rs; print('byol_rs', byol_rs.__version__, byol_rs.__file__)"
} >"$OUT/env.txt" 2>&1

# The CUDA tests: every test module that has CUDA cases (in the smoke run only test_cuda.py, whose
# tests all skip here; that checks the plumbing).
if [ "$SMOKE" = 1 ]; then
  TESTS=(tests/python/test_cuda.py); TEST_TIMEOUT=120
else
  mapfile -t TESTS < <(grep -lE 'mark\.cuda|requires_cuda|devices\(\)' tests/python/test_*.py)
  TEST_TIMEOUT=150
fi
PYTEST=("$PY" -m pytest -m cuda -q -rfEsxX -p no:cacheprovider --continue-on-collection-errors "${TESTS[@]}")
echo "== CUDA tests: ${PYTEST[*]} (timeout ${TEST_TIMEOUT} s)"
timeout -k 10 "$TEST_TIMEOUT" "${PYTEST[@]}" 2>&1 | tee "$OUT/pytest.log"
TEST_RC=${PIPESTATUS[0]}

LEFT=$((BUDGET - (SECONDS - START)))
[ "$LEFT" -ge 60 ] || LEFT=60
BENCH=("$PY" benches/gpu/bench_gpu.py --out "$OUT" --budget-s $((LEFT - 20))
       --pytest-log "$OUT/pytest.log" --pytest-rc "$TEST_RC" --pytest-cmd "${PYTEST[*]}")
[ "$SMOKE" = 1 ] && BENCH+=(--cpu-smoke)
echo "== benchmarks (timeout ${LEFT} s)"
timeout -k 10 "$LEFT" "${BENCH[@]}" 2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}
echo "pytest rc $TEST_RC, bench rc $BENCH_RC, $((SECONDS - START)) s in all; JSON in $OUT/bench_gpu.json"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
