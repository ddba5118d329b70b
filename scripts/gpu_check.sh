#!/usr/bin/env bash
# One prepared check for the lent GPU machine (the device tool), inside ~10 minutes:
#   build the extension with CUDA for sm_90, run the CUDA-marked tests for the
#   CUDA and Triton backends, benchmark on cuda against native torch, and write
#   everything under $OUT (summary.txt is the table to read first).
# Usage (from the repo root, on the device):  bash scripts/gpu_check.sh
# The device has Python 3.12, torch 2.11 + CUDA 13.0, triton 3.6, nvcc, ninja,
# pytest, hypothesis and no network: nothing here downloads anything.
set -uo pipefail
OUT=${OUT:-/tmp/minitorch_ext_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
summary="$OUT/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

say "== gpu_check $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$summary"

t0=$(date +%s)
if ! timeout 300 $PY -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  say "pip editable install failed (see build.log); trying an in-place build"
  timeout 300 $PY setup.py build_ext --inplace >> "$OUT/build.log" 2>&1 || { say "BUILD FAILED"; tail -40 "$OUT/build.log" | tee -a "$summary"; exit 1; }
  ln -sfn ../kernels minitorch_ext/kernels; ln -sfn ../models minitorch_ext/models
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
say "build: $(( $(date +%s) - t0 )) s"
$PY -m minitorch_ext info 2>&1 | tee -a "$summary"

t0=$(date +%s)
timeout 240 $PY -m pytest -q -m cuda -p no:cacheprovider tests > "$OUT/tests.txt" 2>&1
rc=$?
say "cuda tests (rc=$rc, $(( $(date +%s) - t0 )) s):"
grep -E "passed|failed|error" "$OUT/tests.txt" | tail -3 | tee -a "$summary"
grep -E "^(FAILED|ERROR)" "$OUT/tests.txt" | head -20 | tee -a "$summary"
# per-family tally of the CUDA kernels' tests (all picked up by -m cuda above):
# test_attention_cuda, test_gemm_cuda, test_conv_cuda (conv_cuda.cu), test_pool_cuda (pool_cuda.cu), ...
for fam in attention gemm conv pool; do
  nf=$(grep -cE "^(FAILED|ERROR) tests/test_${fam}_cuda\.py" "$OUT/tests.txt")
  say "  ${fam} cuda: ${nf} failed"
done

t0=$(date +%s)
# the Triton GEMM on cuda against torch.mm (cuBLAS): error and TFLOP/s at a few sizes
if [ -f scripts/gpu_gemm_triton.py ]; then
  timeout 90 $PY scripts/gpu_gemm_triton.py > "$OUT/gemm_triton.txt" 2>&1
  say "triton gemm (rc=$?, $(( $(date +%s) - t0 )) s):"
  tail -20 "$OUT/gemm_triton.txt" | tee -a "$summary"
fi

t0=$(date +%s)
# the Triton attention kernels on cuda against F.scaled_dot_product_attention and float64
if [ -f scripts/gpu_attention_triton.py ]; then
  timeout 120 $PY scripts/gpu_attention_triton.py > "$OUT/attention_triton.txt" 2>&1
  say "triton attention (rc=$?, $(( $(date +%s) - t0 )) s):"
  tail -24 "$OUT/attention_triton.txt" | tee -a "$summary"
fi

t0=$(date +%s)
# the Triton conv and pool kernels on cuda against F.conv2d / F.*pool2d and float64 (the interpreter tests,
# here compiled: DEV is cuda when TRITON_INTERPRET is unset)
if [ -f tests/test_conv_triton.py ]; then
  timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_conv_triton.py tests/test_pool_triton.py \
    > "$OUT/conv_pool_triton.txt" 2>&1
  say "triton conv + pool (rc=$?, $(( $(date +%s) - t0 )) s):"
  grep -E "passed|failed|error" "$OUT/conv_pool_triton.txt" | tail -3 | tee -a "$summary"
  grep -E "^(FAILED|ERROR)" "$OUT/conv_pool_triton.txt" | head -20 | tee -a "$summary"
fi

t0=$(date +%s)
timeout 150 $PY -m minitorch_ext.bench all --device cuda --json "$OUT/bench_cuda.json" > "$OUT/bench_cuda.txt" 2>&1
say "bench (rc=$?, $(( $(date +%s) - t0 )) s):"
cat "$OUT/bench_cuda.txt" >> "$summary"
tail -60 "$OUT/bench_cuda.txt"

# ---- pwloss family (pointwise losses): CUDA kernel tally (tests ran with -m cuda above) and the
# Triton kernels compiled on cuda (tests/test_pwloss_triton.py: DEV is cuda without TRITON_INTERPRET)
nf=$(grep -cE "^(FAILED|ERROR) tests/test_pwloss_cuda\.py" "$OUT/tests.txt")
say "  pwloss cuda: ${nf} failed"
t0=$(date +%s)
timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_pwloss_triton.py > "$OUT/pwloss_triton.txt" 2>&1
say "triton pwloss (rc=$?, $(( $(date +%s) - t0 )) s):"
grep -E "passed|failed|error" "$OUT/pwloss_triton.txt" | tail -3 | tee -a "$summary"
grep -E "^(FAILED|ERROR)" "$OUT/pwloss_triton.txt" | head -20 | tee -a "$summary"

# ---- bnorm family: CUDA kernel tally (tests/test_batchnorm_cuda.py ran with -m cuda above) and the
# Triton kernels on cuda through the running-stats test (backend triton)
nf=$(grep -cE "^(FAILED|ERROR) tests/test_batchnorm_cuda\.py" "$OUT/tests.txt")
say "  bnorm cuda: ${nf} failed"

# ---- dropout / embedding: CUDA kernel tally (tests ran with -m cuda above) and their Triton kernels
# on cuda (tests/test_{dropout,embedding}_triton.py: DEV is cuda without TRITON_INTERPRET)
for fam in dropout embedding; do
  nf=$(grep -cE "^(FAILED|ERROR) tests/test_${fam}_cuda\.py" "$OUT/tests.txt")
  say "  ${fam} cuda: ${nf} failed"
done
t0=$(date +%s)
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_dropout_triton.py tests/test_embedding_triton.py \
  > "$OUT/dropemb_triton.txt" 2>&1
say "triton dropout + embedding (rc=$?, $(( $(date +%s) - t0 )) s):"
grep -E "passed|failed|error" "$OUT/dropemb_triton.txt" | tail -3 | tee -a "$summary"
grep -E "^(FAILED|ERROR)" "$OUT/dropemb_triton.txt" | head -20 | tee -a "$summary"

# ---- cross_entropy: CUDA kernel tally (tests/test_cross_entropy_cuda.py ran with -m cuda above)
nf=$(grep -cE "^(FAILED|ERROR) tests/test_cross_entropy_cuda\.py" "$OUT/tests.txt")
say "  cross_entropy cuda: ${nf} failed"
