#!/usr/bin/env bash
# The prepared run for the device machine (a CUDA GPU; see README "GPU checks"): build
# engine._C there against that machine's own torch with the CUDA kernels for sm_90, run the
# CUDA tests, then bench/gpu.py. Everything is logged under $OUT (the device tool brings that
# folder back); the last lines printed are the results table.
#
#   bash bench/device_check.sh [--quick]
#
# Nothing is fetched: cmake, ninja, nvcc, pybind11, pytest and torch come from the machine.
# PY picks the Python (default python3), CMAKE the cmake (default cmake), CUDA_ARCHS the
# targets (default 90).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/device}
mkdir -p "$OUT"
PY=${PY:-python3}
CMAKE=${CMAKE:-cmake}
ARCHS=${CUDA_ARCHS:-90}
export PYTHONUNBUFFERED=1
BUILD=build/device

echo "== device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
"$PY" -c "import torch; print('== torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"

echo "== build (sm_$ARCHS) -> $OUT/build.log"
if ! { "$CMAKE" -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
         -DPython_EXECUTABLE="$(command -v "$PY")" -DCRUCIBLE_CUDA=ON \
         -DCRUCIBLE_CUDA_ARCHS="$ARCHS" \
       && "$CMAKE" --build "$BUILD" -j "$(nproc)"; } >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "== build FAILED (full log: $OUT/build.log)"
  exit 1
fi
# the modules where an installed crucible would have them
cp "$BUILD"/_C.*.so engine/
cp "$BUILD"/_pipeline.*.so engine/
cp "$BUILD"/_kernels.*.so curation/
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

echo "== CUDA tests -> $OUT/tests.log"
"$PY" -m pytest -q -p no:cacheprovider tests/engine/test_attention_cuda.py \
  tests/engine/test_fused_adamw_cuda.py >"$OUT/tests.log" 2>&1
tests_rc=$?
tail -15 "$OUT/tests.log"

echo "== bench/gpu.py -> $OUT/gpu.json, $OUT/bench.log"
"$PY" bench/gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "== tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
