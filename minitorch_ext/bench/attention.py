"""Fused attention: minitorch_ext's scaled_dot_product_attention against torch's on the same inputs.

Family ``attention`` (issue 9, section 5): B=4, H=8, L in {512, 1024, 2048, 4096}, D in {64, 128},
causal and not, float32 and bfloat16, fwd and fwd+bwd.

* ours:   mte.nn.functional.scaled_dot_product_attention (the public entry: argument mapping + our
          fused kernel); fwd+bwd = forward, then backward of a fixed grad_output into q, k, v.
* native: "F.sdpa" = torch.nn.functional.scaled_dot_product_attention (on CPU: torch's fused flash
          kernel), and "naive" = softmax(Q K^T * scale [+ causal -inf]) V written out in torch ops
          (materialises the L x L scores; only up to L = 1024, where it still fits).
* GFLOP/s as flash-attention counts them: 4 B H Lq Lk D forward, 2.5x that for the backward
  (fwd+bwd = 3.5x), halved for causal; % peak against the FMA peak in the header.
* a dropout_p = 0.1 row (L = 1024, D = 64, float32): torch's fused CPU kernel takes no dropout and
  falls back to its math path, which materialises the scores.
* MKL diagnostic (float32, CPU): F.sdpa timed again in a child process with MKL forced onto its
  Intel (AVX-512) code path by the LD_PRELOAD override of bench/gemm.py; printed after the table
  and in each row's JSON note as "mkl-intel-path (diagnostic)".
* peak extra memory (fwd+bwd float32 rows with D = 64 and the dropout rows): the process's resident
  high-water mark (VmHWM, reset through /proc/self/clear_refs) over its resident size before the call,
  one untimed call per side; CUDA: torch.cuda.max_memory_allocated over the allocated size before.
  Printed after the table and in the JSON note.

On a CPU without AVX512-BF16 torch's bfloat16 rows stop at L = 1024 (its bf16 GEMMs are a slow
reference loop there). --quick: L in {512, 1024}, D = 64, bfloat16 only at L = 512.
"""
from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import re
import subprocess
import sys

import torch
import torch.nn.functional as F

from .gemm import _mkl_intel_so, _slow_native_bf16
from .harness import Case, Context, Rotation, compare_to_reference

B, H = 4, 8
LENGTHS = [512, 1024, 2048, 4096]
HEAD_DIMS = [64, 128]
NAIVE_MAX_L = 1024
_FLOOR = {"float32": 2e-5, "bfloat16": 2e-2}


def flops(L: int, D: int, causal: bool, backward: bool) -> int:
    f = 4 * B * H * L * L * D * (3.5 if backward else 1.0)
    return int(f / 2 if causal else f)


def naive(q, k, v, causal: bool, dropout_p: float = 0.0):
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        L = q.shape[-2]
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    p = torch.softmax(s, dim=-1)
    if dropout_p:
        p = F.dropout(p, dropout_p)
    return p @ v


# ---- peak memory ------------------------------------------------------------------------------------


def _read_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1)) * 1024


def _trim():
    gc.collect()
    try:
        import minitorch_ext as mte

        mte.empty_cache()
    except Exception:
        pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def peak_extra_bytes(fn, device) -> int | None:
    """Extra memory one call of fn() raises the high-water mark by (None where not measurable)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        gc.collect()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        r = fn()
        torch.cuda.synchronize()
        del r
        return torch.cuda.max_memory_allocated(device) - base
    try:
        _trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _read_status("VmRSS")
        r = fn()
        peak = _read_status("VmHWM")
        del r
        return max(0, peak - base)
    except OSError:
        return None


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


# ---- the MKL diagnostic --------------------------------------------------------------------------------

_CHILD = r"""
import json, math, sys, time, torch
import torch.nn.functional as F
torch.set_num_threads(int(sys.argv[1]))
res = {}
for key, B, H, L, D, causal, backward, p in json.loads(sys.argv[2]):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).requires_grad_(backward) for _ in range(3))
    dy = torch.randn(B, H, L, D, generator=g)
    def call():
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
        if backward:
            o.backward(dy)
            q.grad = k.grad = v.grad = None
    call()
    ts = []
    t_end = time.perf_counter() + float(sys.argv[3])
    while len(ts) < 3 or (time.perf_counter() < t_end and len(ts) < 100):
        t0 = time.perf_counter(); call(); ts.append(time.perf_counter() - t0)
    ts.sort()
    res[key] = ts[len(ts) // 2] * 1e3
print(json.dumps(res))
"""


def _mkl_diagnostic(jobs, quick) -> tuple[dict, str]:
    if not jobs:
        return {}, ""
    so, why = _mkl_intel_so()
    if so is None:
        return {}, why
    env = dict(os.environ, LD_PRELOAD=so)
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(torch.get_num_threads()), json.dumps(jobs),
                            "0.5" if quick else "2"], env=env, capture_output=True, text=True, timeout=1800)
        return json.loads(r.stdout.strip().splitlines()[-1]), ""
    except Exception as e:  # the diagnostic must never break the bench
        return {}, f"mkl-intel-path (diagnostic) failed: {type(e).__name__}: {e}"


# ---- the family ----------------------------------------------------------------------------------------


def _plan(ctx: Context):
    slow_bf16 = _slow_native_bf16(ctx.device)
    lengths = LENGTHS[:2] if ctx.quick else LENGTHS
    dims = HEAD_DIMS[:1] if ctx.quick else HEAD_DIMS
    plan = []
    for dt in ["float32", "bfloat16"]:
        for L in lengths:
            if dt == "bfloat16" and (L > 1024 and slow_bf16 or ctx.quick and L > 512):
                continue
            for D in dims:
                for causal in (False, True):
                    label = f"B{B} H{H} L{L} D{D}" + (" causal" if causal else "")
                    for backward in (False, True):
                        key = f"{label} {dt} {'fwd+bwd' if backward else 'fwd'}"
                        if ctx.wants(key):
                            plan.append(dict(dt=dt, L=L, D=D, causal=causal, backward=backward, p=0.0,
                                             label=label, key=key))
    L = 512 if ctx.quick else 1024
    for backward in (False, True):
        label = f"B{B} H{H} L{L} D64 dropout0.1"
        key = f"{label} float32 {'fwd+bwd' if backward else 'fwd'}"
        if ctx.wants(key):
            plan.append(dict(dt="float32", L=L, D=64, causal=False, backward=backward, p=0.1, label=label, key=key))
    return plan


def attention(ctx: Context):
    """ours: mte.nn.functional.scaled_dot_product_attention; native: F.scaled_dot_product_attention
    ("F.sdpa", torch's fused kernel) and the naive math ("naive", L <= 1024). GFLOP/s = 4BHL^2D (fwd),
    3.5x for fwd+bwd, halved for causal. MKL-forced F.sdpa (float32 diagnostic) and peak extra memory:
    see the block after the table."""
    dev = ctx.device
    plan = _plan(ctx)
    diag, why = {}, ""
    if dev.type == "cpu" and not ctx.self_test:
        diag, why = _mkl_diagnostic([[c["key"], B, H, c["L"], c["D"], c["causal"], c["backward"], c["p"]]
                                     for c in plan if c["dt"] == "float32"], ctx.quick)
        if why:
            print(why, file=sys.stderr)
    if ctx.self_test:
        ours_sdpa = F.scaled_dot_product_attention
    else:
        import minitorch_ext as mte

        ours_sdpa = mte.nn.functional.scaled_dot_product_attention
    extras = []
    for c in plan:
        yield from _cases(ctx, dev, c, ours_sdpa, diag, why, extras)
    if extras:
        lines = ["", "### attention: MKL-forced F.sdpa (float32 diagnostic) and peak extra memory", "",
                 "| case | pass | F.sdpa mkl-intel-path ms | peak extra MiB: ours | F.sdpa |",
                 "|---|---|--:|--:|--:|"]
        lines += [f"| {e['label']} {e['dt']} | {e['pass']} | {e['diag']} | {e['mem_ours']} | {e['mem_nat']} |"
                  for e in extras]
        print("\n".join(lines), flush=True)


def _cases(ctx, dev, c, ours_sdpa, diag, why, extras):
    dt, L, D, causal, backward, p = c["dt"], c["L"], c["D"], c["causal"], c["backward"], c["p"]
    dtype = getattr(torch, dt)
    gen = torch.Generator(device=dev).manual_seed(L * 131 + D * 7 + causal)

    def make():
        q, k, v = (torch.randn(B, H, L, D, generator=gen, device=dev).to(dtype).requires_grad_(backward)
                   for _ in range(3))
        return q, k, v

    nbytes = 3 * B * H * L * D * torch.tensor([], dtype=dtype).element_size()
    rot = Rotation([make() for _ in range(ctx.input_sets(nbytes))])
    dy = torch.randn(B, H, L, D, generator=gen, device=dev).to(dtype)

    def before():
        rot.advance()
        for t in rot.current:
            t.grad = None

    def side(fn):
        if backward:
            def call():
                q, k, v = rot.current
                o = fn(q, k, v)
                o.backward(dy)
                return o
        else:
            def call():
                with torch.no_grad():
                    return fn(*rot.current)
        return call

    ours_fn = side(lambda q, k, v: ours_sdpa(q, k, v, dropout_p=p, is_causal=causal))
    natives = {"F.sdpa": side(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=p,
                                                                            is_causal=causal))}
    if L <= NAIVE_MAX_L:
        natives["naive"] = side(lambda q, k, v: naive(q, k, v, causal, p))

    def check():
        if L > 1024 or p > 0:
            return None  # the float64 reference would cost more than the case (dropout: tests/ check it)
        q, k, v = rot.current
        if backward:
            got, nat, ref = {}, {}, {}
            for out, fn, qq, kk, vv in [(got, ours_sdpa, q, k, v), (nat, F.scaled_dot_product_attention, q, k, v)]:
                leaves = [t.detach().requires_grad_() for t in (qq, kk, vv)]
                o = fn(*leaves, is_causal=causal)
                o.backward(dy)
                out.update(o=o.detach().float(), dq=leaves[0].grad.float(), dk=leaves[1].grad.float(),
                           dv=leaves[2].grad.float())
            leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
            o = F.scaled_dot_product_attention(*leaves, is_causal=causal)
            o.backward(dy.double())
            ref.update(o=o.detach().float(), dq=leaves[0].grad.float(), dk=leaves[1].grad.float(),
                       dv=leaves[2].grad.float())
        else:
            with torch.no_grad():
                got = {"o": ours_sdpa(q, k, v, is_causal=causal).float()}
                nat = {"o": F.scaled_dot_product_attention(q, k, v, is_causal=causal).float()}
                ref = {"o": F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                           is_causal=causal).float()}
        return compare_to_reference(got, nat, ref, floor=_FLOOR[dt])

    notes = []
    d = diag.get(c["key"])
    if dt == "float32" and d is not None:
        notes.append(f"mkl-intel-path (diagnostic): F.sdpa {d:.3f} ms in a child process")
    elif dt == "float32" and why:
        notes.append(why)
    mem_o = mem_n = None
    if backward and dt == "float32" and (D == 64 and not causal or p > 0) and not ctx.self_test:
        before()
        mem_o = peak_extra_bytes(ours_fn, dev)
        before()
        mem_n = peak_extra_bytes(natives["F.sdpa"], dev)
        before()
        notes.append(f"peak extra memory: ours {_mib(mem_o)} MiB, F.sdpa {_mib(mem_n)} MiB")
    if d is not None or mem_o is not None:
        extras.append(dict(label=c["label"], dt=dt, **{"pass": "fwd+bwd" if backward else "fwd"},
                           diag="-" if d is None else f"{d:.2f}", mem_ours=_mib(mem_o), mem_nat=_mib(mem_n)))
    yield Case(case=c["label"], dtype=dt, pass_="fwd+bwd" if backward else "fwd", ours=ours_fn, native=natives,
               flops=flops(L, D, causal, backward), before=before, check=check, note="; ".join(notes))
