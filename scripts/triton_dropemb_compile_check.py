"""Ahead-of-time compile check of the Triton dropout and embedding kernels (kernels/dropout.py,
kernels/embedding.py) for a CUDA target, without a GPU: triton.compile (+ the ptxas bundled
with triton) of every kernel in each dtype and flag combination the ops launch.

    python scripts/triton_dropemb_compile_check.py [--arch 90]

Exit status 1 when a kernel fails to compile. Run without TRITON_INTERPRET (the kernels must
be real JITFunctions). Same ASTSource API as scripts/triton_conv_pool_compile_check.py.
"""
import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import dropout as DR  # noqa: E402
from kernels import embedding as EM  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--arch", type=int, default=90)
args = ap.parse_args()
failures = []


def one(label, fn, types, consts):
    sig, attrs = {}, {}
    for i, n in enumerate(fn.arg_names):
        if n in consts:
            sig[n] = "constexpr"
        else:
            sig[n] = types.get(n, "i64")
            if sig[n].startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    t = time.time()
    try:
        k = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", args.arch, 32), options=dict(num_warps=4, num_stages=2))
    except Exception as e:  # noqa: BLE001
        failures.append(label)
        print(f"FAIL {label}: {type(e).__name__}: {str(e)[-800:]}", flush=True)
        return
    ptx = k.asm["ptx"]
    print(f"ok   {label:40s} smem={k.metadata.shared:6d} B, ptx {len(ptx.splitlines())} lines, "
          f"{time.time() - t:.1f} s", flush=True)


for dt, tname in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"), ("fp64", "float64")):
    for chan in (False, True):
        one(f"dropout {tname} chan={chan}", DR._dropout_kernel,
            {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "s_ptr": "*fp64"},
            {"BLOCK": 1024, "CHAN": chan, "FP64": dt == "fp64"})
    for it in ("i64", "i32"):
        one(f"embedding fwd {tname} idx {it}", EM._fwd_kernel,
            {"w_ptr": f"*{dt}", "idx_ptr": f"*{it}", "y_ptr": f"*{dt}"}, {"BLOCK_D": 256})
    for sgbf in (False, True):
        one(f"embedding bwd {tname} sgbf={sgbf}", EM._bwd_kernel,
            {"g_ptr": f"*{dt}", "order_ptr": "*i64", "start_ptr": "*i64", "gw_ptr": f"*{dt}"},
            {"SGBF": sgbf, "BLOCK_D": 256, "FP64": dt == "fp64"})

print("FAILED: " + ", ".join(failures) if failures else "all kernels compiled")
sys.exit(1 if failures else 0)
