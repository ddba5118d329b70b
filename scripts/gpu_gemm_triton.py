#!/usr/bin/env python
"""The Triton GEMM (kernels/gemm.py) on a lent GPU: error against a float64
reference beside torch.mm's own error on the same inputs, and TFLOP/s of ours
and of torch (triton.testing.do_bench, median). Meant to finish in < 60 s on
an H200: compiling dominates, so only the rows marked "tuned" autotune (each
config compiled once per specialization); the others use the fixed config
(MINITORCH_EXT_TRITON_AUTOTUNE=0). --autotune-all tunes every row (minutes),
--no-autotune none.

    PYTHONPATH=. python scripts/gpu_gemm_triton.py [--no-autotune|--autotune-all] [--json FILE]

Needs only torch + triton on cuda (not the C++ extension). Prints one row per
case; `err` columns are max |x - ref| / max |ref|; `ok` is the error-ratio
rule of the tests (ours <= 4x torch's (2x for 16-bit) + one ulp of scale).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

T0 = time.time()
ap = argparse.ArgumentParser()
ap.add_argument("--no-autotune", action="store_true")
ap.add_argument("--autotune-all", action="store_true")
ap.add_argument("--json", default=None)
args = ap.parse_args()
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kernels import gemm as G  # noqa: E402

assert torch.cuda.is_available(), "needs a GPU"
G._empty = lambda shape, dtype, device: torch.empty(shape, dtype=dtype, device=device)  # no C++ extension needed
dev = "cuda"
print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
      f"autotune={'off' if args.no_autotune else ('all rows' if args.autotune_all else 'rows marked tuned')}",
      flush=True)
rows = []


def rel(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def ok_rule(eo, en, dtype):
    factor = 2.0 if dtype in (torch.bfloat16, torch.float16) else 4.0
    res = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
    return eo <= factor * en + res


def bench(fn):
    return do_bench(fn, warmup=10, rep=50, return_mode="median")  # ms


def set_tuning(tune: bool):
    on = (tune or args.autotune_all) and not args.no_autotune
    os.environ["MINITORCH_EXT_TRITON_AUTOTUNE"] = "1" if on else "0"  # read by kernels/gemm.py at each call
    return on


def case(name, M, N, K, dtype, layout="NN", act="none", bias=False, timed=True, tune=False):
    t = time.time()
    tuned = set_tuning(tune)
    a = torch.randn((K, M) if layout[0] == "T" else (M, K), device=dev).to(dtype)
    b = torch.randn((N, K) if layout[1] == "T" else (K, N), device=dev).to(dtype)
    a = a.t() if layout[0] == "T" else a
    b = b.t() if layout[1] == "T" else b
    bb = torch.randn(N, device=dev).to(dtype) if bias else None

    def torch_fn():
        y = torch.mm(a, b)
        if bb is not None:
            y = y + bb
        return F.gelu(y) if act == "gelu" else (F.relu(y) if act == "relu" else y)

    def ours_fn():
        return G.gemm(a, b, bias=bb, act=act)

    out, nat = ours_fn(), torch_fn()
    ref = a.double() @ b.double()
    if bb is not None:
        ref = ref + bb.double()
    ref = F.gelu(ref) if act == "gelu" else (F.relu(ref) if act == "relu" else ref)
    eo, en = rel(out, ref), rel(nat, ref)
    row = dict(name=name, M=M, N=N, K=K, dtype=str(dtype).split(".")[1], layout=layout, act=act, tuned=tuned,
               err_ours=eo, err_torch=en, ok=ok_rule(eo, en, dtype))
    if timed:
        flops = 2.0 * M * N * K
        ms_o, ms_t = bench(ours_fn), bench(torch_fn)
        row.update(tflops_ours=flops / ms_o * 1e-9, tflops_torch=flops / ms_t * 1e-9, speedup=ms_t / ms_o)
    row["wall_s"] = time.time() - t
    rows.append(row)
    tf = (f"  {row['tflops_ours']:7.1f} vs {row['tflops_torch']:7.1f} TFLOP/s ({row['speedup']:.2f}x)"
          if timed else "")
    print(f"{name:24s} {M:5d}x{N:5d}x{K:5d} {row['dtype']:8s} {layout} {act:5s} err {eo:.2e} (torch {en:.2e}) "
          f"{'ok ' if row['ok'] else 'BAD'}{tf}{' tuned' if tuned else ''}  [{row['wall_s']:.1f}s]", flush=True)


def linear_case(M, N, K, dtype, act="gelu", tune=False):
    t = time.time()
    set_tuning(tune)
    x = torch.randn(M, K, device=dev).to(dtype)
    w = (torch.randn(N, K, device=dev) / K ** 0.5).to(dtype)
    b = torch.randn(N, device=dev).to(dtype)
    dy = torch.randn(M, N, device=dev).to(dtype)

    def ours_fb():
        out, pre = G.linear_fwd(x, w, b, act, 0.01)
        return out, G.linear_bwd(dy, x, w, pre, act, 0.01, (True, True, True))

    xt, wt, bt = (v.detach().requires_grad_() for v in (x, w, b))

    def torch_fb():
        y = F.gelu(F.linear(xt, wt, bt))
        return y, torch.autograd.grad(y, (xt, wt, bt), dy)

    (o, go), (n, gn) = ours_fb(), torch_fb()
    x64, w64, b64 = (v.double().requires_grad_() for v in (x, w, b))
    r = F.gelu(F.linear(x64, w64, b64))
    gr = torch.autograd.grad(r, (x64, w64, b64), dy.double())
    errs = [(rel(o, r), rel(n.detach(), r))] + [(rel(p, q), rel(s, q)) for p, s, q in zip(go, gn, gr)]
    ok = all(ok_rule(eo, en, dtype) for eo, en in errs)
    ms_of = bench(lambda: G.linear_fwd(x, w, b, act, 0.01))
    ms_tf = bench(lambda: F.gelu(F.linear(x, w, b)))
    ms_o, ms_t = bench(ours_fb), bench(torch_fb)
    flops = 2.0 * M * N * K
    rows.append(dict(name="linear+gelu", M=M, N=N, K=K, dtype=str(dtype).split(".")[1], errs=errs, ok=ok,
                     fwd_tflops_ours=flops / ms_of * 1e-9, fwd_tflops_torch=flops / ms_tf * 1e-9,
                     fb_tflops_ours=3 * flops / ms_o * 1e-9, fb_tflops_torch=3 * flops / ms_t * 1e-9,
                     wall_s=time.time() - t))
    print(f"{'linear+gelu fwd':24s} {M:5d}x{N:5d}x{K:5d} {str(dtype).split('.')[1]:8s} "
          f"{flops / ms_of * 1e-9:7.1f} vs {flops / ms_tf * 1e-9:7.1f} TFLOP/s; fwd+bwd "
          f"{3 * flops / ms_o * 1e-9:7.1f} vs {3 * flops / ms_t * 1e-9:7.1f}; errs(out,dx,dw,db) "
          f"{' '.join(f'{a:.1e}/{b:.1e}' for a, b in errs)} {'ok' if ok else 'BAD'} [{time.time() - t:.1f}s]",
          flush=True)


bf16, f16, f32, f64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
print(f"# bf16 tl.dot canary (compiled): {G.bf16_dot_is_right('cuda')}; "
      f"canaries: {G.interpreter_canaries('cuda')}", flush=True)
# correctness at odd sizes first (cheap, untimed)
for M, N, K in [(1, 1, 1), (7, 63, 65), (257, 65, 1000), (1000, 257, 63)]:
    for dt in (bf16, f32, f64):
        case("odd", M, N, K, dt, layout="TN" if M == 257 else "NN", act="gelu", bias=True, timed=False)
# speed
case("odd fp16", 257, 65, 1000, f16, layout="NT", timed=False)
case("square", 4096, 4096, 4096, bf16, tune=True)
case("square", 4096, 4096, 4096, bf16)
case("square TN", 4096, 4096, 4096, bf16, layout="TN")
case("transformer qkv", 8192, 768, 768, bf16)
case("transformer up", 8192, 3072, 768, bf16, act="gelu", bias=True, tune=True)
case("transformer down", 8192, 768, 3072, bf16)
case("mlp small-M", 64, 512, 784, bf16, act="relu", bias=True)
case("square fp32 ieee", 2048, 2048, 2048, f32)
torch.set_float32_matmul_precision("high")
case("square fp32 tf32", 2048, 2048, 2048, f32)
torch.set_float32_matmul_precision("highest")
case("square fp64", 1024, 1024, 1024, f64)
linear_case(8192, 3072, 768, bf16)
print(f"# total {time.time() - T0:.1f}s (compiles included); all ok: {all(r['ok'] for r in rows)}", flush=True)
path = args.json or (os.path.join(os.environ["OUT"], "gpu_gemm_triton.json") if os.environ.get("OUT") else None)
if path:
    with open(path, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                       rows=rows), f, indent=1)
