"""Benchmark entries for the optimizer-step family (pass = "step").

`cases(quick)` returns rows for the harness: {"family", "case", "dtype", "pass",
"native", "ours", "native_fn", "bytes"}. `ours` and `native_fn` each perform one
optimizer step on the same parameters, gradients and state tensors (shared, so
both sides touch the same memory; the gradients stay in place between calls,
so every call is a full step); `bytes`
is what a step must move at minimum (read p, g and the state, write p and the
state). Cases (issue 3): 16 tensors x 1M float32 params (64 MB of params: far
beyond the 32 MB LLC) and 1,000 tensors x 4,096; against torch's AdamW/Adam
with foreach=False, foreach=True and fused=True, and SGD(momentum=0.9),
RMSprop and Adagrad against torch's variants of each (RMSprop has no fused=True).

Run alone: python -m minitorch_ext.bench.optim [--quick]
(prints median ms, interleaved, THP as the environment sets it).
"""
from __future__ import annotations

import gc
import os
import statistics
import time

import torch

import minitorch_ext as mte

SHAPES = {"16x1M": (16, 1 << 20), "1000x4096": (1000, 4096)}
QUICK_SHAPES = {"16x256K": (16, 1 << 18), "1000x1024": (1000, 1024)}

# bytes moved per parameter element (float32): reads + writes
_BYTES_PER = {"Adam": 4 * (4 + 3), "AdamW": 4 * (4 + 3), "SGD": 4 * (3 + 2), "RMSprop": 4 * (3 + 2),
              "Adagrad": 4 * (3 + 2)}
_ALGOS = ("AdamW", "Adam", "SGD", "RMSprop", "Adagrad")
# torch's variants per algorithm (RMSprop has no fused=True)
_NATIVES = {a: ("foreach=False", "foreach=True", "fused=True") for a in _ALGOS}
_NATIVES["RMSprop"] = ("foreach=False", "foreach=True")
_KW = {"SGD": dict(lr=1e-3, momentum=0.9), "RMSprop": dict(lr=1e-3), "Adagrad": dict(lr=1e-2)}


def _params(n_tensors: int, numel: int, seed: int = 0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ps = []
    for _ in range(n_tensors):
        p = torch.nn.Parameter(torch.randn(numel, generator=g).to(device))
        p.grad = (torch.randn(numel, generator=g) * 1e-2).to(device)
        ps.append(p)
    return ps


def _clone(ps):
    out = []
    for p in ps:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        out.append(q)
    return out


def _make(algo: str, impl: str, params):
    kw = _KW.get(algo, dict(lr=1e-3, weight_decay=1e-2))
    if impl == "ours":
        return getattr(mte.optim, algo)(params, **kw)
    flag = {"foreach=False": dict(foreach=False), "foreach=True": dict(foreach=True),
            "fused=True": dict(fused=True)}[impl]
    return getattr(torch.optim, algo)(params, **kw, **flag)


_LLC_FLUSH: list = []


def _flush_llc() -> None:
    """Read 64 MiB (twice the last-level cache) so the next call starts cold: with
    shared tensors, the side that runs right after another would otherwise find
    the tail of the same arrays still cached (untimed, before every call)."""
    if not _LLC_FLUSH:
        _LLC_FLUSH.append(torch.ones(16 << 20))
    _LLC_FLUSH[0].sum()


def _share_memory(ours_opt, nat_opt) -> None:
    """Make `nat_opt` (built over the same Parameter objects as `ours_opt`) step
    ours's very state tensors. Then both sides read and write the same physical
    memory: on this machine where a large tensor's pages land moves a
    bandwidth-bound step by 10-30% from one process to the next, which would
    otherwise be measured as a difference between the two sides."""
    for p, st in ours_opt.state.items():
        nst = nat_opt.state[p]
        for k, v in st.items():
            if torch.is_tensor(v) and k in nst and torch.is_tensor(nst[k]) and nst[k].shape == v.shape \
                    and nst[k].dtype == v.dtype and nst[k].device == v.device:
                nst[k] = v


def cases(quick: bool = False, device="cpu") -> list[dict]:
    rows = []
    shapes = QUICK_SHAPES if quick else SHAPES
    for case, (n, numel) in shapes.items():
        base = _params(n, numel, device=device)
        for algo in _ALGOS:
            params = _clone(base)  # one set of params, grads and state, stepped by every side
            ours_opt = _make(algo, "ours", params)
            ours_opt.step()  # state allocated outside the timed calls
            for native in _NATIVES[algo]:
                nat_opt = _make(algo, native, params)
                nat_opt.step()
                _share_memory(ours_opt, nat_opt)
                rows.append({
                    "family": "optim", "case": f"{algo} {case}", "dtype": "float32", "pass": "step",
                    "native": f"{algo}({native})", "ours": ours_opt.step, "native_fn": nat_opt.step,
                    "bytes": n * numel * _BYTES_PER[algo],
                })
    return rows


def optim(ctx):
    """Fused optimizer steps: ours (minitorch_ext.optim) against torch.optim with foreach=False,
    foreach=True and fused=True, one row per native variant. GB/s counts the bytes a step must
    move (read p, grad and state, write p and state). Every side steps the same
    parameters and state tensors, and the last-level cache is flushed (untimed) before every
    call; gradients stay in place, so every call is a full step. The last column of the
    notes gives the peak extra memory of one step (tensors a step allocates beyond what was live)."""
    from .harness import Case

    by_case: dict = {}
    for r in cases(quick=ctx.quick, device=ctx.device):
        by_case.setdefault(r["case"], []).append(r)
    for case, rs in by_case.items():
        algo, shape = case.split(" ", 1)
        if not ctx.wants(f"{case} float32 step"):
            continue
        mem = {"ours": peak_extra_memory(rs[0]["ours"])}
        mem.update({r["native"]: peak_extra_memory(r["native_fn"]) for r in rs})
        yield Case(case=case, dtype="float32", pass_="step", ours=rs[0]["ours"],
                   native={r["native"]: r["native_fn"] for r in rs}, bytes=rs[0]["bytes"],
                   before=_flush_llc if ctx.device.type == "cpu" else None,
                   note="peak extra memory of a step: " + ", ".join(f"{k} {v} B" for k, v in mem.items()))


# Clipping + step: ours folds the clip into the step (optimizer.clip_grad_norm_),
# torch runs clip_grad_norm_ then the step. Bytes a clipped step must move: read
# the grads for the norm, the step's own traffic, and the clipped grads written.
_CLIP_BYTES_PER = {"AdamW": 4 * (1 + 4 + 3 + 1), "SGD": 4 * (1 + 3 + 2 + 1)}
_CLIP_MAX_NORM = 1e-3  # far below the grads' norm: every call clips


def _clip_sides(algo: str, base):
    """{label: fn} for the clipped-step rows, plus a `before` that restores the
    grads a side clipped (clipping is in place, so the next call would see
    already-clipped grads and a coefficient of 1)."""
    dirty: list = []

    def side(opt, run):
        params = [p for g in opt.param_groups for p in g["params"]]
        saved = [p.grad.clone() for p in params]

        def fn():
            run(opt, params)
            dirty.append((params, saved))
        return fn

    def before():
        _flush_llc()
        while dirty:
            params, saved = dirty.pop()
            for p, g in zip(params, saved):
                p.grad.copy_(g)

    def ours_run(opt, params):
        opt.clip_grad_norm_(_CLIP_MAX_NORM)
        opt.step()

    def native_run(foreach):
        def run(opt, params):
            torch.nn.utils.clip_grad_norm_(params, _CLIP_MAX_NORM, foreach=foreach)
            opt.step()
        return run

    ours_opt = _make(algo, "ours", _clone(base))
    ours_opt.step()
    ours = side(ours_opt, ours_run)
    native = {}
    for label, impl, foreach in ((f"clip(foreach=False)+{algo}(foreach=False)", "foreach=False", False),
                                 (f"clip(foreach=True)+{algo}(fused=True)", "fused=True", True)):
        opt = _make(algo, impl, _clone(base))
        opt.step()
        native[label] = side(opt, native_run(foreach))
    return ours, native, before


def optim_clip(ctx):
    """Gradient clipping and the step together: ours folds the clip's multiply into the step kernel
    (optimizer.clip_grad_norm_ then step(): one read of the grads for the norm, then the step, which
    scales each grad as it reads it and writes it back), torch runs clip_grad_norm_ (a norm pass and a
    multiply pass) then its step. max_norm is far below the grads' norm, so every call clips; the grads
    are restored between calls, untimed. GB/s counts what a clipped step must move: the grads read for
    the norm, the step's traffic, and the clipped grads written."""
    from .harness import Case

    shapes = QUICK_SHAPES if ctx.quick else SHAPES
    for shape, (n, numel) in shapes.items():
        for algo in ("AdamW", "SGD"):
            case = f"{algo}+clip {shape}"
            if not ctx.wants(f"{case} float32 step"):
                continue
            ours, native, before = _clip_sides(algo, _params(n, numel, device=ctx.device))
            yield Case(case=case, dtype="float32", pass_="step", ours=ours, native=native, before=before,
                       bytes=n * numel * _CLIP_BYTES_PER[algo])


def peak_extra_memory(fn, warmup: int = 1) -> int:
    """Peak bytes of tensors a call of `fn` allocates beyond what was live
    before it. CUDA: max_memory_allocated. CPU: every op's new (non-aliasing)
    output is counted while it is alive (a dispatch mode watches allocations
    and a finalizer each release), and the running peak is returned."""
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available() and torch.cuda.memory_allocated() > 0:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    live = {"cur": 0, "peak": 0}
    seen: set[int] = set()

    def release(n):
        live["cur"] -= n

    class _Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ins = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs or {}))
                   if isinstance(t, torch.Tensor)}
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    ptr = st.data_ptr()
                    if ptr in ins or ptr in seen or st.nbytes() == 0:
                        continue
                    seen.add(ptr)
                    live["cur"] += st.nbytes()
                    live["peak"] = max(live["peak"], live["cur"])
                    weakref.finalize(t, release, st.nbytes())
            return out

    with _Watch():
        fn()
    gc.collect()
    return live["peak"]


def _time_interleaved(fns: list, reps: int, inner: int = 1) -> list[float]:
    samples = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            samples[i].append((time.perf_counter() - t0) / inner * 1e3)
    return [statistics.median(s) for s in samples]


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both sides")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}")
    rows = cases(args.quick)
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    print(f"{'case':<20} {'native':<24} {'ours ms':>8} {'native ms':>9} {'speedup':>8} {'ours GB/s':>9}")
    for case, rs in by_case.items():
        gc.collect()
        fns = [rs[0]["ours"]] + [r["native_fn"] for r in rs]
        med = _time_interleaved(fns, args.reps)
        for r, nat in zip(rs, med[1:]):
            print(f"{case:<20} {r['native']:<24} {med[0]:8.3f} {nat:9.3f} {nat / med[0]:7.2f}x "
                  f"{r['bytes'] / med[0] / 1e6:9.1f}")
        print(f"{case:<20} peak extra memory of a step: ours {peak_extra_memory(rs[0]['ours'])} B, "
              + ", ".join(f"{r['native']} {peak_extra_memory(r['native_fn'])} B" for r in rs))


if __name__ == "__main__":
    main()
