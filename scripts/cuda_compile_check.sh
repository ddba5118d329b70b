#!/usr/bin/env bash
# Compile-check CUDA sources alone, with the flags setup.py's CUDAExtension uses,
# without rebuilding the whole extension (a full CUDA build takes ~12 min on 2 cores).
#   bash scripts/cuda_compile_check.sh csrc/norm/norm_cuda.cu [more.cu ...]
# Prints ptxas register/spill lines per kernel; exits non-zero on a compile error.
# CUDA_HOME (default /usr/local/cuda) and TORCH_CUDA_ARCH_LIST (default 9.0) as in the Makefile.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}; ARCH=${ARCH//./}
TI=$(python3 -c "import torch.utils.cpp_extension as c; print(' '.join(c.include_paths()))")
PYI=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
ISYS=""; for d in $TI $PYI "$CUDA_HOME/include"; do ISYS="$ISYS -isystem $d"; done
out=$(mktemp -d)
for f in "$@"; do
  t0=$(date +%s)
  "$CUDA_HOME/bin/nvcc" -Icsrc $ISYS -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr --compiler-options '-fPIC' -std=c++20 \
    -gencode "arch=compute_${ARCH},code=sm_${ARCH}" -O3 --use_fast_math -lineinfo \
    -DMINITORCH_EXT_WITH_CUDA -Xptxas -v -c "$f" -o "$out/$(basename "$f").o" 2>&1 \
    | grep -E "error|warning|registers|spill|Compiling entry" | grep -vE "^\s*$" | sed 's/^ptxas info    ://' || true
  [ -s "$out/$(basename "$f").o" ] || { echo "FAILED: $f"; exit 1; }
  echo "ok: $f compiled in $(( $(date +%s) - t0 )) s"
done
rm -rf "$out"
