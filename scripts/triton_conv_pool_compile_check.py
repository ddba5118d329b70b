"""Ahead-of-time compile check of the Triton conv and pool kernels (kernels/conv.py,
kernels/pool.py) for a CUDA target, without a GPU: triton.compile (+ the ptxas bundled
with triton) of every kernel in each dtype class and flag combination the ops launch,
with the GPU tile configs. Reports shared memory and whether the conv GEMM loops got
tensor-core instructions (wgmma / mma.sync) in the 16-bit and float32 variants.

    python scripts/triton_conv_pool_compile_check.py [--arch 90]

Exit status 1 when a kernel fails to compile (or a tensor-core variant has none).
Run without TRITON_INTERPRET (the kernels must be real JITFunctions). Written against
triton 3.8's ASTSource(fn, signature, constexprs, attrs) API, as
scripts/gpu_attention_triton.py --compile-only.
"""
import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import triton  # noqa: E402

from kernels import conv as C  # noqa: E402
from kernels import pool as P  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--arch", type=int, default=90)
args = ap.parse_args()

FLOATS = {"slope_hi", "slope_lo"}
failures = []


def one(label, fn, ptrs, consts, num_warps=4, num_stages=2, expect_tc=False):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = {}, {}
    for i, n in enumerate(fn.arg_names):
        if n in consts:
            sig[n] = "constexpr"
        elif n in ptrs:
            sig[n] = ptrs[n]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in FLOATS:
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    t = time.time()
    try:
        k = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", args.arch, 32),
                           options=dict(num_warps=num_warps, num_stages=num_stages))
    except Exception as e:  # noqa: BLE001
        failures.append(label)
        print(f"FAIL {label}: {type(e).__name__}: {str(e)[-800:]}", flush=True)
        return
    ptx = k.asm["ptx"]
    wgmma, mma = ptx.count("wgmma.mma_async"), ptx.count("mma.sync")
    bad = expect_tc and wgmma == 0 and mma == 0
    if bad:
        failures.append(label)
    print(f"{'BAD ' if bad else 'ok  '}{label:60s} smem={k.metadata.shared:6d} wgmma={wgmma:2d} mma.sync={mma:3d}  "
          f"{time.time() - t:4.1f}s", flush=True)


TY = {"16": "bf16", "32": "fp32", "64": "fp64"}
for cls, ty in TY.items():
    acc = "fp64" if cls == "64" else "fp32"
    cfg, warps, stages = C._GPU_CFG[cls]
    base = dict(FP64=cls == "64", USE_DOT=True, PRECISION={"16": None, "32": "tf32", "64": "ieee"}[cls],
                WIDEN_BF16=False, **cfg)
    tc = cls != "64"
    for mode, bias, act in ((0, True, "none"), (1, False, "relu"), (3, True, "gelu")):
        one(f"conv fwd {ty} mode={mode} bias={bias} act={act}", C._fwd_kernel,
            {"X": f"*{ty}", "Wt": f"*{ty}", "Bias": f"*{ty}", "Out": f"*{ty}"},
            dict(base, MODE=mode, HAS_BIAS=bias, ACT=act), warps, stages, expect_tc=tc)
    for gi_ty in (ty, acc):
        one(f"conv dgrad {ty} -> {gi_ty}", C._dgrad_kernel, {"GO": f"*{ty}", "Wt": f"*{ty}", "GI": f"*{gi_ty}"},
            base, warps, stages, expect_tc=tc)
    for mode in (0, 2):
        one(f"conv wgrad {ty} mode={mode}", C._wgrad_kernel, {"GO": f"*{ty}", "X": f"*{ty}", "GW": f"*{ty}"},
            dict(base, MODE=mode), warps, stages, expect_tc=tc)
    one(f"conv fold {ty}", C._fold_kernel, {"GP": f"*{acc}", "GI": f"*{ty}", "TabH": "*i32", "TabW": "*i32"},
        dict(BLOCK=256))
    one(f"conv bgrad {ty}", C._bgrad_kernel, {"GO": f"*{ty}", "GB": f"*{ty}"},
        dict(FP64=cls == "64", BLOCK_N=32, BLOCK_R=128))
    fcfg, fw, fs = C._FP64_FMA_CFG
    if cls == "64":
        one("conv fwd fp64 FMA fallback", C._fwd_kernel,
            {"X": "*fp64", "Wt": "*fp64", "Bias": "*fp64", "Out": "*fp64"},
            dict(base, USE_DOT=False, MODE=0, HAS_BIAS=True, ACT="none", **fcfg), fw, fs)
    for cl in (False, True):
        fl = dict(CL=cl, FP64=cls == "64", BLOCK=256)
        one(f"pool max fwd {ty} cl={cl}", P._max_fwd_kernel, {"X": f"*{ty}", "Y": f"*{ty}", "Ind": "*i64"}, fl)
        one(f"pool avg fwd {ty} cl={cl}", P._avg_fwd_kernel, {"X": f"*{ty}", "Y": f"*{ty}"},
            dict(fl, COUNT_PAD=cl))
        one(f"pool avg bwd {ty} cl={cl}", P._avg_bwd_kernel, {"GO": f"*{ty}", "GI": f"*{ty}"},
            dict(fl, COUNT_PAD=not cl))
        one(f"pool adaptive fwd {ty} cl={cl}", P._adaptive_fwd_kernel, {"X": f"*{ty}", "Y": f"*{ty}"}, fl)
        one(f"pool adaptive bwd {ty} cl={cl}", P._adaptive_bwd_kernel, {"GO": f"*{ty}", "GI": f"*{ty}"}, fl)
    one(f"pool max bwd {ty}", P._max_bwd_kernel, {"GO": f"*{ty}", "Ind": "*i64", "WS": f"*{acc}", "GI": f"*{ty}"},
        dict(BLOCK=64))

print(f"{len(failures)} failed" + (": " + ", ".join(failures) if failures else ""))
sys.exit(1 if failures else 0)
