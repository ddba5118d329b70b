#!/usr/bin/env python
"""The Triton FlashAttention-2 kernels (kernels/attention.py): ahead-of-time
compile check for a CUDA target, and, on a lent GPU, errors against a float64
reference beside torch's own F.scaled_dot_product_attention error, and speed.

    python scripts/gpu_attention_triton.py --compile-only [--arch 90]   # no GPU needed
    PYTHONPATH=. python scripts/gpu_attention_triton.py [--no-autotune] [--json FILE]
    python scripts/gpu_attention_triton.py --cpu-smoke       # the row logic, tiny, interpreter

--compile-only: triton.compile (+ the ptxas bundled with triton) of every kernel
variant (forward for each dtype / mask kind / causal / dropout and the
autotune configs, the three backward kernels, attention_weights) for sm_<arch>;
prints shared memory and whether the 16-bit/TF32 dots got
wgmma/mma.sync; exit status 1 when one fails to compile. Written against
triton 3.8's ASTSource(fn, signature, constexprs, attrs) API, shared by 3.6.

GPU run (needs only torch + triton on cuda, not the C++ extension; < ~2 min on
an H200, compiles dominating): one row per case; `err` = max |x - ref| / max |ref|
with ref the float64 formula on the same rounded inputs; `ok` = ours <= 2x
(16-bit) / 4x (fp32) torch sdpa's error + one ulp; then ms and TFLOP/s of the
forward and forward+backward, ours vs torch sdpa (flash/efficient backends).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

T0 = time.time()
ap = argparse.ArgumentParser()
ap.add_argument("--compile-only", action="store_true")
ap.add_argument("--arch", type=int, default=90)
ap.add_argument("--no-autotune", action="store_true")
ap.add_argument("--json", default=None)
ap.add_argument("--cpu-smoke", action="store_true",
                help="run this script's correctness rows on tiny shapes under the interpreter (no GPU)")
args = ap.parse_args()
if args.cpu_smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
else:
    os.environ.pop("TRITON_INTERPRET", None)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
if args.no_autotune:
    os.environ["MINITORCH_EXT_TRITON_AUTOTUNE"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kernels import attention as A  # noqa: E402


# --------------------------------------------------------------------------
# ahead-of-time compile check
# --------------------------------------------------------------------------
def compile_check() -> int:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    DIV16 = [["tt.divisibility", 16]]
    FLOATS = {"scale_hi", "scale_lo", "ik_hi", "ik_lo"}
    I64 = {"seed", "thresh"}
    UNIT = {"sqd", "skd", "svd", "smn", "sod", "sdd"}  # contiguous last dims: the JIT specializes stride 1
    failures = []

    def one(label, fn, ptrs, consts, num_warps, num_stages, expect_tc=False):
        sig, attrs = {}, {}
        consts = dict(consts)
        for n in UNIT:
            if n in fn.arg_names:
                consts.setdefault(n, 1)
        for i, n in enumerate(fn.arg_names):
            if n in consts:
                sig[n] = "constexpr"
            elif n in ptrs:
                sig[n] = ptrs[n]
                attrs[(i,)] = DIV16
            elif n in FLOATS:
                sig[n] = "fp32"
            elif n in I64:
                sig[n] = "i64"
            else:
                sig[n] = "i32"
        t = time.time()
        try:
            k = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=target,
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
        print(f"{'BAD ' if bad else 'ok  '}{label:66s} smem={k.metadata.shared:6d} wgmma={wgmma:2d} "
              f"mma.sync={mma:3d}  {time.time() - t:4.1f}s", flush=True)

    TY = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}

    def flags(dtype, kind, causal, drop, D, Dv):
        fp64 = dtype == torch.float64
        bd, bdv = A._blocks_d(D, Dv, fp64)
        return dict(MASK_KIND=kind, CAUSAL=causal, DROPOUT=drop, FP64=fp64,
                    PRECISION="tf32" if dtype == torch.float32 else ("ieee" if fp64 else None),
                    WIDEN_BF16=False, BLOCK_D=bd, BLOCK_DV=bdv)

    def ptr_types(dtype, kind, names, acc_names):
        ty = TY[dtype]
        acc = "fp64" if dtype == torch.float64 else "fp32"
        d = {n: (f"*{acc}" if n in acc_names else f"*{ty}") for n in names}
        d["Mask"] = "*u8" if kind == 1 else f"*{ty}"
        return d

    variants = [  # (dtype, MASK_KIND, CAUSAL, DROPOUT, D, Dv)
        (torch.bfloat16, 0, True, False, 128, 128), (torch.bfloat16, 0, False, False, 64, 64),
        (torch.bfloat16, 1, False, True, 64, 64), (torch.bfloat16, 2, True, False, 80, 80),
        (torch.float16, 0, True, False, 128, 128), (torch.float32, 2, True, True, 64, 64),
        (torch.float64, 1, True, True, 64, 64),
    ]
    for dtype, kind, causal, drop, D, Dv in variants:
        cls = A._cls(dtype)
        cfgs = A._FWD_CONFIGS.get(cls, [A._FWD_FIXED[cls]]) if (kind, causal, drop) == (0, True, False) \
            else [A._FWD_FIXED[cls]]
        tc = dtype != torch.float64
        for bm, bn, w, st in cfgs:
            one(f"fwd {TY[dtype]} mask={kind} causal={causal} drop={drop} D={D} {bm}x{bn} w{w} s{st}",
                A._fwd_kernel, ptr_types(dtype, kind, ("Q", "K", "V", "Out"), ()) | {"Lse": "*fp64" if not tc else "*fp32"},
                dict(flags(dtype, kind, causal, drop, D, Dv), BLOCK_M=bm, BLOCK_N=bn), w, st, expect_tc=tc)
        kbm, kbn, qbm, qbn, w, st = A._BWD_FIXED[cls]
        acc = "*fp64" if not tc else "*fp32"
        one(f"bwd_pre {TY[dtype]} Dv={Dv}", A._bwd_pre_kernel,
            {"O": f"*{TY[dtype]}", "DO": f"*{TY[dtype]}", "Delta": acc},
            dict(BLOCK_M=32, BLOCK_DV=flags(dtype, kind, causal, drop, D, Dv)["BLOCK_DV"]), 4, 1)
        one(f"bwd_dkdv {TY[dtype]} mask={kind} causal={causal} drop={drop} D={D} {kbm}x{kbn} w{w} s{st}",
            A._bwd_dkdv_kernel,
            ptr_types(dtype, kind, ("Q", "K", "V", "DO", "DK", "DV"), ()) | {"Lse": acc, "Delta": acc},
            dict(flags(dtype, kind, causal, drop, D, Dv), BLOCK_M=kbm, BLOCK_N=kbn), w, st, expect_tc=tc)
        for store_ds in (False, True):
            one(f"bwd_dq {TY[dtype]} mask={kind} causal={causal} drop={drop} D={D} ds={store_ds} {qbm}x{qbn}",
                A._bwd_dq_kernel,
                ptr_types(dtype, kind, ("Q", "K", "V", "DO", "DQ", "DS"), ()) | {"Lse": acc, "Delta": acc},
                dict(flags(dtype, kind, causal, drop, D, Dv), STORE_DQ=True, STORE_DS=store_ds,
                     BLOCK_M=qbm, BLOCK_N=qbn), w, st, expect_tc=tc)
        wf = {k: v for k, v in flags(dtype, kind, causal, drop, D, Dv).items() if k not in ("DROPOUT", "BLOCK_DV")}
        one(f"weights {TY[dtype]} mask={kind} causal={causal} D={D}", A._weights_kernel,
            ptr_types(dtype, kind, ("Q", "K", "P"), ()) | {"Lse": acc},
            dict(wf, BLOCK_M=16 if not tc else 64, BLOCK_N=16 if not tc else 64), 4, 2, expect_tc=tc)
    print(f"# {len(failures)} failed: {failures}" if failures else "# all compiled", flush=True)
    return 1 if failures else 0


if args.compile_only:
    sys.exit(compile_check())

# --------------------------------------------------------------------------
# GPU run
# --------------------------------------------------------------------------
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench  # noqa: E402

assert args.cpu_smoke or torch.cuda.is_available(), "needs a GPU (or --compile-only / --cpu-smoke)"
A._empty = lambda shape, dtype, device: torch.empty(shape, dtype=dtype, device=device)  # no C++ extension needed
_spec = importlib.util.spec_from_file_location("_philox_ref", os.path.join(ROOT, "minitorch_ext", "_philox.py"))
_philox = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_philox)
dev = "cpu" if args.cpu_smoke else "cuda"
print(f"# {'interpreter (cpu smoke)' if args.cpu_smoke else torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
      f"autotune={'off' if args.no_autotune else 'on'}", flush=True)
rows = []


def rel(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def ok_rule(eo, en, dtype):
    factor = 2.0 if dtype in (torch.bfloat16, torch.float16) else 4.0
    res = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
    return eo <= factor * en + res


def ref64(q, k, v, causal, scale, mask=None, p=0.0, seed=0):
    """float64 formula (with autograd), GQA by repeat_interleave."""
    G = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = scale * (q @ kk.transpose(-1, -2))
    Lq, Lk = s.shape[-2:]
    allowed = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    if mask is not None:
        allowed = allowed & mask
    s = s.masked_fill(~allowed, -math.inf)
    empty = (s == -math.inf).all(-1, keepdim=True)
    P = torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    if p > 0:
        keep = _philox.keep_mask(seed, p, *s.shape).to(q.device)
        P = P * keep / (1 - p)
    return P @ vv


def case(name, B, Hq, Hkv, L, D, dtype, causal, p=0.0, timed=True, seed=1234):
    t = time.time()
    scale = 1.0 / math.sqrt(D)
    q = torch.randn(B, Hq, L, D, device=dev).to(dtype)
    k = torch.randn(B, Hkv, L, D, device=dev).to(dtype)
    v = torch.randn(B, Hkv, L, D, device=dev).to(dtype)
    do = torch.randn(B, Hq, L, D, device=dev).to(dtype)
    om = (True, True, True, False)

    def ours_f():
        return A.attention_fwd(q, k, v, None, p, causal, scale, seed)

    def ours_fb():
        o, lse = ours_f()
        return (o,) + A.attention_bwd(do, q, k, v, o, lse, None, p, causal, scale, seed, om)[:3]

    G = Hq // Hkv
    qt, kt, vt = (x.detach().requires_grad_() for x in (q, k, v))

    def torch_f():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=G > 1)

    def torch_fb():
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale, enable_gqa=G > 1)
        return (o,) + torch.autograd.grad(o, (qt, kt, vt), do)

    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    r = ref64(q64, k64, v64, causal, scale, p=p, seed=seed)
    rg = torch.autograd.grad(r, (q64, k64, v64), do.double())
    ours = ours_fb()
    errs_o = [rel(a, b) for a, b in zip(ours, (r,) + rg)]
    if p == 0 and dtype != torch.float64:
        nat = torch_fb()
        errs_t = [rel(a, b) for a, b in zip(nat, (r,) + rg)]
    else:  # torch's dropout stream is not ours: only the float64 reference
        errs_t = [float("nan")] * 4
    tol = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4, torch.float64: 1e-10}[dtype]
    ok = all(ok_rule(eo, en, dtype) if en == en else eo < tol for eo, en in zip(errs_o, errs_t))
    row = dict(name=name, B=B, Hq=Hq, Hkv=Hkv, L=L, D=D, dtype=str(dtype).split(".")[1], causal=causal, p=p,
               err_ours=errs_o, err_torch=errs_t, ok=ok)
    if timed:
        flops = 4.0 * B * Hq * L * L * D * (0.5 if causal else 1.0)
        ms = dict(of=do_bench(ours_f, warmup=5, rep=30), tf=do_bench(torch_f, warmup=5, rep=30),
                  ofb=do_bench(ours_fb, warmup=5, rep=30), tfb=do_bench(torch_fb, warmup=5, rep=30))
        row.update({f"ms_{k_}": v_ for k_, v_ in ms.items()},
                   tflops_fwd_ours=flops / ms["of"] * 1e-9, tflops_fwd_torch=flops / ms["tf"] * 1e-9,
                   tflops_fb_ours=3.5 * flops / ms["ofb"] * 1e-9, tflops_fb_torch=3.5 * flops / ms["tfb"] * 1e-9)
    row["wall_s"] = time.time() - t
    rows.append(row)
    e = " ".join(f"{a:.1e}/{b:.1e}" for a, b in zip(errs_o, errs_t))
    tf = (f" fwd {row['tflops_fwd_ours']:6.1f} vs {row['tflops_fwd_torch']:6.1f} TF/s, fwd+bwd "
          f"{row['tflops_fb_ours']:6.1f} vs {row['tflops_fb_torch']:6.1f}" if timed else "")
    print(f"{name:18s} B{B} H{Hq}/{Hkv} L{L:5d} D{D:4d} {row['dtype']:8s} causal={int(causal)} p={p:.1f} "
          f"err(o,dq,dk,dv) ours/torch {e} {'ok ' if ok else 'BAD'}{tf} [{row['wall_s']:.1f}s]", flush=True)


bf16, f16, f32, f64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
if args.cpu_smoke:
    case("smoke", 1, 4, 2, 33, 16, bf16, True, timed=False)
    case("smoke fp32", 1, 2, 2, 17, 16, f32, False, timed=False)
    case("smoke fp64 drop", 1, 2, 1, 17, 16, f64, True, p=0.3, timed=False)
    sys.exit(0 if all(r["ok"] for r in rows) else 1)
# correctness at odd sizes (untimed)
case("odd", 1, 4, 2, 257, 80, bf16, True, timed=False)
case("odd fp32", 1, 2, 2, 129, 63, f32, False, timed=False)
case("odd fp64", 1, 2, 1, 65, 16, f64, True, timed=False)
case("dropout", 1, 2, 2, 257, 64, bf16, True, p=0.2, timed=False)
case("dropout fp32", 1, 2, 1, 129, 64, f32, False, p=0.3, timed=False)
# L = 1000 (not a block multiple), D 64 / 128
for D in (64, 128):
    for causal in (False, True):
        case("L1000", 4, 16, 16, 1000, D, bf16, causal)
case("L1000 gqa", 4, 16, 4, 1000, 128, bf16, True)
case("L1000 fp16", 4, 16, 16, 1000, 64, f16, True)
case("L4096", 2, 16, 16, 4096, 128, bf16, True)
print(f"# total {time.time() - T0:.1f}s (compiles included); all ok: {all(r['ok'] for r in rows)}", flush=True)
path = args.json or (os.path.join(os.environ["OUT"], "gpu_attention_triton.json") if os.environ.get("OUT") else None)
if path:
    with open(path, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                       rows=rows), f, indent=1)
