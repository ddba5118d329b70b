#!/usr/bin/env python
"""Compile every variant of the Triton GEMM kernels (kernels/gemm.py) for a
CUDA target ahead of time, WITHOUT a GPU (triton.compile + the ptxas bundled
with triton), and say what each got: wgmma / mma.sync (tensor cores), cp.async
(software pipelining), shared memory. Catches kernels that run under the
interpreter but do not compile, and configs that lost their pipelining.

    python scripts/triton_gemm_compile_check.py [--arch 90] [--quick]

Exit status 1 when a variant fails to compile, or a 16-bit/TF32 variant on
sm_90 gets no wgmma or no cp.async. Written against triton 3.8's
ASTSource(fn, signature, constexprs, attrs) API, which triton 3.6 shares
(checked with both: PYTHONPATH=<a triton 3.6 install> python scripts/...).
~2-3 min on a loaded 2-core machine (--quick: one config per class, ~1 min).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # compile, not interpret
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import gemm as G  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--arch", type=int, default=90)
ap.add_argument("--quick", action="store_true")
args = ap.parse_args()
target = GPUTarget("cuda", args.arch, 32)
DIV16 = [["tt.divisibility", 16]]  # what the JIT gives 16-aligned pointers and ints
failures = []


def compile_one(label, fn, ptrs, consts, num_warps, num_stages, floats=(), expect_tc=False):
    sig, attrs = {}, {}
    for i, n in enumerate(fn.arg_names):
        if n in consts:
            sig[n] = "constexpr"
        elif n in ptrs:
            sig[n] = ptrs[n]
            attrs[(i,)] = DIV16
        elif n in floats:
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            attrs[(i,)] = DIV16
    t = time.time()
    try:
        k = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=target,
                           options=dict(num_warps=num_warps, num_stages=num_stages))
    except Exception as e:  # noqa: BLE001
        failures.append(label)
        print(f"FAIL {label}: {type(e).__name__}: {str(e)[-600:]}", flush=True)
        return
    ptx = k.asm["ptx"]
    wgmma, mma, cp = ptx.count("wgmma.mma_async"), ptx.count("mma.sync"), ptx.count("cp.async.")
    bad = expect_tc and args.arch >= 90 and (wgmma == 0 or cp == 0)
    if bad:
        failures.append(label)
    print(f"{'BAD ' if bad else 'ok  '}{label:58s} smem={k.metadata.shared:6d} wgmma={wgmma:2d} "
          f"mma.sync={mma:3d} cp.async={cp:3d}  {time.time() - t:4.1f}s", flush=True)


GEMM_PTRS = ("A", "B", "C", "Bias", "Out", "Pre")
FLOATS = ("alpha_hi", "alpha_lo", "beta_hi", "beta_lo", "slope_hi", "slope_lo")
EPI = dict(HAS_C=True, HAS_BIAS=True, BIAS_DIM=1, ACT="gelu", STORE_PRE=True, USE_DOT=True, WIDEN_BF16=False,
           stride_cn=1, stride_bias=1)
LAYOUTS = {"NN": dict(stride_ak=1, stride_bn=1), "TN": dict(stride_am=1, stride_bn=1),
           "NT": dict(stride_ak=1, stride_bk=1)}


def gemm(ty, acc, precision, cfg, layout="NN", **over):
    consts = dict(EPI, FP64=acc == tl.float64, PRECISION=precision, **LAYOUTS[layout], **cfg.kwargs)
    consts.update(over)
    kw = cfg.kwargs
    label = (f"gemm {ty} {layout} {precision or ''} {'dot' if consts['USE_DOT'] else 'fma'} {consts['ACT']} "
             f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}")
    compile_one(label, G._gemm_kernel, {p: f"*{ty}" for p in GEMM_PTRS}, consts, cfg.num_warps, cfg.num_stages,
                FLOATS, expect_tc=ty in ("bf16", "fp16") or precision == "tf32")


cfgs = {c: ([G._FIXED[c]] if args.quick else G._CONFIGS[c]) for c in G._CONFIGS}
for cfg in cfgs["16"]:
    gemm("bf16", tl.float32, None, cfg)
for layout in ("TN", "NT"):
    gemm("bf16", tl.float32, None, G._FIXED["16"], layout)
gemm("fp16", tl.float32, None, G._FIXED["16"])
for cfg in cfgs["32"]:
    gemm("fp32", tl.float32, "tf32", cfg)
gemm("fp32", tl.float32, "ieee", G._FIXED["32"])
gemm("fp32", tl.float32, "ieee", G._FIXED["32"], "TN")
for cfg in cfgs["64"]:
    gemm("fp64", tl.float64, "ieee", cfg)
gemm("fp64", tl.float64, "ieee", G._FP64_FMA_CONFIG, USE_DOT=False)
# epilogue variants on the fixed bf16 config
for act in ([] if args.quick else [a for a in G.ACTS if a != "gelu"]):
    gemm("bf16", tl.float32, None, G._FIXED["16"], ACT=act, STORE_PRE=act != "none", HAS_C=False, BIAS_DIM=0)

# g = grad_out * act'(preact) with the db partials, and the partial-sum kernel
for ty, acc in (("bf16", tl.float32), ("fp32", tl.float32), ("fp64", tl.float64)):
    for act in (G.ACTS if ty == "fp32" else ("gelu",)):
        consts = dict(FP64=acc == tl.float64, ACT=act, WRITE_G=True, WRITE_PART=True, BLOCK_R=16, BLOCK_N=128, stride_dyn=1,
                      stride_pn=1)
        compile_one(f"act_bwd {ty} {act}", G._act_bwd_kernel,
                    dict(DY=f"*{ty}", Pre=f"*{ty}", G=f"*{ty}", Part="*fp64" if ty == "fp64" else "*fp32"),
                    consts, 4, 1, ("slope_hi", "slope_lo"))
compile_one("sum_rows fp32->bf16", G._sum_rows_kernel, dict(Part="*fp32", Out="*bf16"),
            dict(BLOCK_P=32, BLOCK_N=128), 4, 1)
print(f"# {len(failures)} failed: {failures}" if failures else "# all compiled", flush=True)
sys.exit(1 if failures else 0)
