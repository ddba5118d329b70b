"""The GEMM core and Linear: torch.ops.minitorch_ext.gemm / linear_fwd / linear_bwd
against torch.mm and F.linear (+ activation, autograd) on the same inputs.

Families (issue 8, section 4):
* gemm:   square 256..4096, the transformer shapes (8192 tokens x 768->768,
          768->3072, 3072->768), the tutorial's MLP (64 x 784->512) and the
          decode shapes (M = 1, 16 on 768 and 4096), float32 and bfloat16,
          layouts NN / NT / TN (a transposed operand is a .t() view: no copy on
          either side). flops = 2 M N K.
* linear: Linear + bias + GELU / ReLU, fwd and fwd+bwd; ours = the raw ops
          (linear_fwd; + linear_bwd with every gradient), native = F.gelu(F.linear())
          under autograd with x, weight and bias requiring grad. flops = 2 M N K
          forward, 3x that for fwd+bwd.

The MKL diagnostic (float32 gemm rows on CPU): torch.mm timed again in a child
process with LD_PRELOAD of a tiny library defining mkl_serv_intel_cpu_true() ==
1, the well-known override that makes MKL take its Intel code path on an AMD
CPU. Its median is carried in each row's note as "mkl-intel-path (diagnostic)";
it is skipped, with a one-line note, where gcc is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

from .harness import Case, Context, Rotation, compare_to_reference

SQUARE = [256, 512, 1024, 2048, 4096]
# (M, N, K, label)
SHAPES = [(n, n, n, f"{n}^3") for n in SQUARE] + [
    (8192, 768, 768, "8192x768<-768"),
    (8192, 3072, 768, "8192x3072<-768"),
    (8192, 768, 3072, "8192x768<-3072"),
    (64, 512, 784, "64x512<-784"),
    (1, 768, 768, "1x768<-768"),
    (16, 768, 768, "16x768<-768"),
    (1, 4096, 4096, "1x4096<-4096"),
    (16, 4096, 4096, "16x4096<-4096"),
]
LAYOUTS = ["NN", "NT", "TN"]
_FLOOR = {"float32": 1e-5, "bfloat16": 1e-2}


def _ops():
    import minitorch_ext  # noqa: F401

    return torch.ops.minitorch_ext


def _operands(M, N, K, layout, dtype, gen, dev):
    a = (torch.randn(K, M, generator=gen, device=dev).to(dtype).t() if layout[0] == "T"
         else torch.randn(M, K, generator=gen, device=dev).to(dtype))
    b = (torch.randn(N, K, generator=gen, device=dev).to(dtype).t() if layout[1] == "T"
         else torch.randn(K, N, generator=gen, device=dev).to(dtype))
    return a, b


def _layouts_for(M, N, K, quick):
    if M <= 16:  # decode: x . W^T is the case that matters
        return ["NT"]
    if quick or M * N * K > 2048 ** 3 or M * N * K < 1024 ** 3 and M == N == K:
        return ["NN"]
    return LAYOUTS


# ---- the MKL diagnostic ------------------------------------------------------------------------------

_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
res = {}
for key, M, N, K, layout in json.loads(sys.argv[2]):
    a = torch.randn(K, M).t() if layout[0] == "T" else torch.randn(M, K)
    b = torch.randn(N, K).t() if layout[1] == "T" else torch.randn(K, N)
    torch.mm(a, b)
    ts = []
    t_end = time.perf_counter() + float(sys.argv[3])
    while len(ts) < 5 or (time.perf_counter() < t_end and len(ts) < 200):
        t0 = time.perf_counter(); torch.mm(a, b); ts.append(time.perf_counter() - t0)
    ts.sort()
    res[key] = ts[len(ts) // 2] * 1e3
print(json.dumps(res))
"""


def _mkl_intel_so() -> tuple[str | None, str]:
    if shutil.which("gcc") is None:
        return None, "mkl-intel-path (diagnostic) skipped: gcc not found"
    d = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "minitorch_ext")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        d = tempfile.mkdtemp(prefix="minitorch_ext_")
    so = os.path.join(d, "mkl_intel_cpu_true.so")
    if not os.path.exists(so):
        src = os.path.join(d, "mkl_intel_cpu_true.c")
        with open(src, "w") as f:
            f.write("int mkl_serv_intel_cpu_true(void) { return 1; }\n")
        r = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so, src], capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"mkl-intel-path (diagnostic) skipped: gcc failed: {r.stderr.strip()[:200]}"
    return so, ""


def _mkl_diagnostic(jobs, quick) -> tuple[dict, str]:
    """{key: torch.mm ms in a child with the MKL override preloaded}, and a note."""
    if not jobs:
        return {}, ""
    so, why = _mkl_intel_so()
    if so is None:
        return {}, why
    env = dict(os.environ, LD_PRELOAD=so)
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(torch.get_num_threads()), json.dumps(jobs),
                            "0.5" if quick else "2"], env=env, capture_output=True, text=True, timeout=900)
        return json.loads(r.stdout.strip().splitlines()[-1]), ""
    except Exception as e:  # the diagnostic must never break the bench
        return {}, f"mkl-intel-path (diagnostic) failed: {type(e).__name__}: {e}"


# ---- gemm ----------------------------------------------------------------------------------------------


def _slow_native_bf16(dev) -> bool:
    """torch's CPU bfloat16 matmul without AVX512-BF16 (oneDNN's fast path) runs a reference loop
    (2048^3 takes minutes on an AVX2 Zen 3): time it only on small shapes there."""
    if dev.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" not in f.read()
    except OSError:
        return False


def gemm(ctx: Context):
    """ours: torch.ops.minitorch_ext.gemm(a, b); native: torch.mm(a, b); same (possibly transposed-view)
    operands. GFLOP/s = 2MNK / ours ms. On a CPU without AVX512-BF16, bfloat16 rows stop at 1024^3
    (torch's bfloat16 matmul is a reference loop there, minutes per call)."""
    dev = ctx.device
    plan = []
    slow_bf16 = _slow_native_bf16(dev)
    for dt in ["float32", "bfloat16"]:
        for M, N, K, label in SHAPES:
            if ctx.quick and M * N * K > 2048 ** 3:
                continue
            if dt == "bfloat16" and slow_bf16 and M * N * K > 1024 ** 3 // 2:
                continue
            for layout in _layouts_for(M, N, K, ctx.quick):
                key = f"{label} {layout}"
                if ctx.wants(f"{key} {dt} fwd"):
                    plan.append((dt, M, N, K, layout, key))
    diag, why = {}, ""
    if dev.type == "cpu" and not ctx.self_test:
        diag, why = _mkl_diagnostic([[k, M, N, K, lay] for dt, M, N, K, lay, k in plan if dt == "float32"],
                                    ctx.quick)
        if why:
            print(why, file=sys.stderr)
    mm_ours = torch.mm if ctx.self_test else _ops().gemm
    for dt, M, N, K, layout, key in plan:
        dtype = getattr(torch, dt)
        gen = torch.Generator(device=dev).manual_seed(M * 7 + N * 3 + K)
        a0, b0 = _operands(M, N, K, layout, dtype, gen, dev)
        nbytes = (a0.numel() + b0.numel()) * a0.element_size()
        # clone keeps the strides of a dense (transposed) view
        rot = Rotation([(a0, b0)] + [(a0.clone(), b0.clone()) for _ in range(ctx.input_sets(nbytes) - 1)])

        def check(rot=rot, dt=dt, M=M, N=N, K=K):
            if M * N * K > 2048 ** 3:
                return None  # the float64 reference would cost more than the case
            a, b = rot.current
            ref = {"c": (a.double() @ b.double()).float()}
            return compare_to_reference({"c": mm_ours(a, b).float()}, {"c": torch.mm(a, b).float()}, ref,
                                        floor=_FLOOR[dt])

        note = ""
        if dt == "float32" and key in diag:
            note = f"mkl-intel-path (diagnostic): torch.mm {diag[key]:.3f} ms in a child process"
        elif dt == "float32" and why:
            note = why
        yield Case(case=key, dtype=dt, pass_="fwd",
                   ours=lambda rot=rot: mm_ours(*rot.current), native={"torch.mm": lambda rot=rot: torch.mm(*rot.current)},
                   flops=2 * M * N * K, before=rot.advance, check=check, note=note)


# ---- linear --------------------------------------------------------------------------------------------

LINEAR_SHAPES = [(8192, 768, 768), (8192, 768, 3072), (8192, 3072, 768), (64, 784, 512), (16, 4096, 4096),
                 (1, 4096, 4096)]  # (M tokens, K in, N out)


def linear(ctx: Context):
    """ours: linear_fwd (+ linear_bwd for fwd+bwd, all three grads) with the activation fused;
    native: F.gelu/F.relu(F.linear(x, w, b)) under autograd, x, w, b requiring grad.
    GFLOP/s = 2MNK (fwd) or 6MNK (fwd+bwd) / ours ms."""
    dev = ctx.device
    slow_bf16 = _slow_native_bf16(dev)
    for dt in ["float32", "bfloat16"]:
        dtype = getattr(torch, dt)
        for M, K, N in LINEAR_SHAPES:
            if ctx.quick and M * K * N > 8192 * 768 * 768:
                continue
            if dt == "bfloat16" and slow_bf16 and M * K * N > 1024 ** 3 // 2:
                continue
            for act in ["gelu", "relu"]:
                key = f"{M}x{K}->{N} +bias+{act}"
                if not ctx.wants(f"{key} {dt} fwd", f"{key} {dt} fwd+bwd"):
                    continue
                yield from _linear_cases(ctx, dev, dtype, dt, M, K, N, act, key)


def _linear_cases(ctx, dev, dtype, dt, M, K, N, act, key):
    gen = torch.Generator(device=dev).manual_seed(M + K + N)
    x = torch.randn(M, K, generator=gen, device=dev).to(dtype).requires_grad_()
    w = (torch.randn(N, K, generator=gen, device=dev) / K ** 0.5).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(N, generator=gen, device=dev)).to(dtype).requires_grad_()
    dy = torch.randn(M, N, generator=gen, device=dev).to(dtype)
    fn = F.gelu if act == "gelu" else F.relu

    def native_fwd():
        return fn(F.linear(x, w, b))

    def native_step():
        fn(F.linear(x, w, b)).backward(dy)

    def before():
        x.grad = w.grad = b.grad = None

    if ctx.self_test:
        ours_fwd, ours_step = native_fwd, native_step
    else:
        ops = _ops()
        xd, wd, bd = x.detach(), w.detach(), b.detach()

        def ours_fwd():
            return ops.linear_fwd(xd, wd, bd, act, 0.0)

        def ours_step():
            y, pre = ops.linear_fwd(xd, wd, bd, act, 0.0)
            return ops.linear_bwd(dy, xd, wd, pre, act, 0.0, [True, True, True])

    def check(backward):
        before()
        yn = fn(F.linear(x, w, b))
        nat = {"y": yn.detach()}
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
        y64 = fn(F.linear(x64, w64, b64))
        ref = {"y": y64.detach()}
        if backward:
            yn.backward(dy)
            nat.update(dx=x.grad, dw=w.grad, db=b.grad)
            ref.update(zip(("dx", "dw", "db"), torch.autograd.grad(y64, (x64, w64, b64), dy.double())))
            got = ours_step()
            got = dict(zip(("dx", "dw", "db"), got)) if not ctx.self_test else {"dx": x.grad, "dw": w.grad,
                                                                                  "db": b.grad}
            got["y"] = ours_fwd()[0] if not ctx.self_test else yn.detach()
        else:
            got = {"y": ours_fwd()[0] if not ctx.self_test else yn.detach()}
        before()
        return compare_to_reference({k: v.float() for k, v in got.items()}, {k: v.float() for k, v in nat.items()},
                                    {k: ref[k].float() for k in got}, floor=_FLOOR[dt])

    flops = 2 * M * N * K
    yield Case(case=key, dtype=dt, pass_="fwd", ours=ours_fwd,
               native={f"F.{act}(F.linear)": native_fwd}, flops=flops, before=before,
               check=lambda: check(False))
    yield Case(case=key, dtype=dt, pass_="fwd+bwd", ours=ours_step,
               native={f"F.{act}(F.linear) autograd": native_step}, flops=3 * flops, before=before,
               check=lambda: check(True))
