#!/usr/bin/env bash
# make test's C++ part. 1) The core and C API tests under AddressSanitizer + UndefinedBehaviorSanitizer.
# 2) A Release build (retina_infer, the parity tool the Python tests use, install + find_package consumer),
# with the TensorRT backend compiled where TensorRT and CUDA are found: a TensorRT install (TensorRT_ROOT),
# or, in CI, TensorRT's headers from ../shared/third_party with TensorRT-RTX's library and CUDA's runtime from
# the venv's wheels. Build outputs go to .cpp-build/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
SRC="$ROOT/runtime/cpp"
OUT="$ROOT/.cpp-build"
JOBS=${JOBS:-2}
VENV=${VENV:-$ROOT/.venv}
[ -d "$VENV" ] && VENV=$(cd "$VENV" && pwd)
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
mkdir -p "$OUT"

configure() {  # configure DIR ARGS...: quiet unless it fails
  local dir=$1
  shift
  if ! cmake -S "$SRC" -B "$dir" "${GEN[@]}" "$@" >"$dir.configure.log" 2>&1; then
    cat "$dir.configure.log" >&2
    return 1
  fi
  grep "retina_runtime:" "$dir.configure.log" || true
}

configure "$OUT/asan" -DCMAKE_BUILD_TYPE=Debug -DRETINA_SANITIZE=ON -DRETINA_WITH_TENSORRT=OFF -DRETINA_BUILD_TOOLS=OFF
cmake --build "$OUT/asan" -j "$JOBS" --target test_core test_c_api
(cd "$OUT/asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure)

TRT_ARGS=()
HEADERS="$ROOT/../shared/third_party/tensorrt-headers"
SITE=$(ls -d "$VENV"/lib/python3*/site-packages 2>/dev/null | head -1 || true)
if [ -z "${TensorRT_ROOT:-}${TENSORRT_ROOT:-}" ] && [ -d "$HEADERS/11.1/include" ] && [ -n "$SITE" ] \
  && [ -f "$SITE/nvidia/cu13/include/cuda_runtime_api.h" ] && [ -f "$SITE/nvidia/cu13/lib/libcudart.so.13" ] \
  && [ -f "$SITE/tensorrt_rtx_libs/libtensorrt_rtx.so.1" ]; then
  CUDA_INC="$SITE/nvidia/cu13/include;$SITE/triton/backends/nvidia/include"
  TRT_ARGS=(-DTensorRT_INCLUDE_DIR="$HEADERS/11.1/include" -DTensorRT_LIBRARY="$SITE/tensorrt_rtx_libs/libtensorrt_rtx.so.1"
    -DRETINA_CUDA_INCLUDE_DIRS="$CUDA_INC" -DRETINA_CUDART_LIBRARY="$SITE/nvidia/cu13/lib/libcudart.so.13")
  # TensorRT 10.3 (JetPack 6) API: the backend must compile against its headers too.
  if [ -d "$HEADERS/10.3.0/include" ]; then
    c++ -std=c++17 -fsyntax-only -I"$SRC/include" -I"$SRC/src" -isystem "$HEADERS/10.3.0/include" \
      -isystem "$SITE/nvidia/cu13/include" -isystem "$SITE/triton/backends/nvidia/include" "$SRC/src/trt_backend.cpp"
    echo "retina_runtime: TensorRT backend compiles against TensorRT 10.3.0 headers"
  fi
fi
configure "$OUT/release" -DCMAKE_BUILD_TYPE=Release "${TRT_ARGS[@]}"
cmake --build "$OUT/release" -j "$JOBS"
(cd "$OUT/release" && ctest --output-on-failure)
