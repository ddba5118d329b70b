"""Shared machinery of ``python -m minitorch_ext.bench``: timing, ceilings, table, JSON.

A family file only describes cases (``Case``); everything else is here.

How a case is timed
-------------------
* ours and each native variant run interleaved, in rounds: ours, native_1, ...,
  native_k, then the next round in reverse order, on the same inputs, so drift
  (other processes, clocks, thermal) hits every side alike; each call is timed
  on its own and we report the median (and the interquartile range in JSON).
* ``case.before()`` runs, untimed, before every timed call of every side: it
  rotates input sets and sets grads to None, so every side pays the same
  allocations inside the timed call.
* A call's return value stays alive until the clock stops: freeing the output
  is not timed (for either side).
* CPU: ``time.perf_counter`` around each call, gc off. CUDA: CUDA events around
  each call with the L2 cache flushed (256 MB memset) before it, as
  ``triton.testing.do_bench`` does, synchronized once per round.
* The number of rounds fills a time budget per case and backend (``--budget``),
  sized from one warm round, within [min_rounds, max_rounds].
* Inputs: at least the last-level cache in size, or rotated among several
  identical sets (``Context.input_sets``) so a call never reads what the
  previous call left in the cache.

Ceilings measured once per run, with the same thread count: copy bandwidth (a
256 MiB CPU / 1 GiB GPU tensor copied into a preallocated one, read+write bytes
over time) and a large matmul (GFLOP/s), so every row can say what fraction of
the machine's own ceiling it reaches.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from . import FAMILIES, get_family


# ----------------------------------------------------------------------------- what a family declares


@dataclass
class Case:
    """One benchmark case: ours against one or several native variants.

    case:    the shape, e.g. "8192x1024"
    dtype:   e.g. "float32"
    pass_:   "fwd", "fwd+bwd", "step", ... (the JSON key is "pass")
    ours:    zero-argument callable running our implementation once; it runs
             inside ``minitorch_ext.use_backend(backend)`` for each backend.
    native:  {label: callable}; each label becomes its own row with its own
             native_ms and speedup, e.g. {"F.layer_norm": ...} or
             {"AdamW(foreach=False)": ..., "AdamW(fused=True)": ...}.
    bytes:   bytes that must move per call (for GB/s and % of copy), or None.
    flops:   floating-point operations per call (for GFLOP/s and % of matmul), or None.
    before:  untimed, before every timed call of every side (rotate inputs,
             zero grads, ...), or None.
    check:   untimed, once per backend before timing: returns None when ours
             agrees with native, else a message (reported, and the run exits 1).
    note:    free text carried into the JSON row.
    """

    case: str
    dtype: str
    pass_: str
    ours: Callable[[], Any]
    native: dict[str, Callable[[], Any]]
    bytes: Optional[int] = None
    flops: Optional[int] = None
    before: Optional[Callable[[], None]] = None
    check: Optional[Callable[[], Optional[str]]] = None
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.case} {self.dtype} {self.pass_}"


@dataclass
class Context:
    """What a family function gets: ``fn(ctx) -> Iterable[Case]``.

    device:    torch.device the run is on
    quick:     --quick was given (families may shrink their own work)
    self_test: --self-test: build ``ours`` from native torch instead of minitorch_ext
               (so the harness runs, and can be checked, without the extension)
    llc_bytes: size of the CPU's last-level cache
    filter:    the --filter pattern; ``wants(key)`` lets a family skip building inputs
               for cases that would be filtered out anyway (the harness filters too)
    """

    device: torch.device
    quick: bool = False
    self_test: bool = False
    llc_bytes: int = 32 << 20
    filter: Optional[re.Pattern] = None

    def wants(self, *keys: str) -> bool:
        """True when any of the case keys ("8192x1024 float32 fwd") passes --filter."""
        return self.filter is None or any(self.filter.search(k) for k in keys)

    def input_sets(self, bytes_read: int) -> int:
        """How many identical input sets to rotate through so that a call does not find
        its inputs in the cache: 1 when one call reads at least the last-level cache (and
        always on CUDA, where the harness flushes L2 before every call), else enough sets
        that the traffic between two uses of a set (each call reads x and writes as much)
        is well over the cache."""
        if self.device.type != "cpu" or bytes_read >= self.llc_bytes:
            return 1
        return min(8, 1 + math.ceil(self.llc_bytes / max(1, bytes_read)))


class Rotation:
    """Cycle through identical input sets: ``advance()`` in ``Case.before``, ``current`` in the
    timed callables. One rotation shared by ours and native, so consecutive calls (of either
    side) read different sets."""

    def __init__(self, sets: list):
        self.sets = list(sets)
        self.i = 0

    def advance(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]

    @property
    def current(self):
        return self.sets[self.i]


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref||, in float32 (a coarse agreement check for ``Case.check``;
    the tests judge precision)."""
    a, b = ours.detach().float(), ref.detach().float()
    den = torch.linalg.vector_norm(b).item()
    return torch.linalg.vector_norm(a - b).item() / (den if den > 0 else 1.0)


def compare_to_reference(ours: dict, native: dict, ref: dict, *, floor: float, factor: float = 2.0) -> Optional[str]:
    """For ``Case.check``: each output of ours (name -> tensor) must have native's shape and dtype,
    and a relative error against the reference (float64 math) at most ``factor`` times native's own
    error, or ``floor``. None when all agree, else what differs. Native torch is not the reference:
    its bf16 LayerNorm weight grads, for one, are off by ~7% on CPU."""
    bad = []
    for k, r in ref.items():
        a, n = ours.get(k), native[k]
        if a is None or a.shape != n.shape or a.dtype != n.dtype:
            got = None if a is None else (tuple(a.shape), a.dtype)
            bad.append(f"{k}: got {got}, native gives {(tuple(n.shape), n.dtype)}")
            continue
        err, nerr = rel_error(a, r), rel_error(n, r)
        if not err <= max(factor * nerr, floor):  # `not <=` also catches NaN
            bad.append(f"{k}: relative error {err:.2e} against the reference (native: {nerr:.2e})")
    return "; ".join(bad) or None


# ----------------------------------------------------------------------------- timing

NOISY = 0.25  # a row whose interquartile range exceeds this fraction of its median is flagged


class _Clock:
    """One round of timed calls: ``round(fns, order, before)`` -> {index: seconds}."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            # as triton.testing.do_bench: clear L2 before every timed call
            self._flush = torch.empty(256 << 20, dtype=torch.int8, device=device)

    def round(self, fns, order, before) -> dict[int, float]:
        if not self.cuda:
            out = {}
            for i in order:
                if before is not None:
                    before()
                t0 = time.perf_counter()
                r = fns[i]()
                t1 = time.perf_counter()
                del r
                out[i] = t1 - t0
            return out
        events = {}
        for i in order:
            if before is not None:
                before()
            self._flush.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            r = fns[i]()
            end.record()
            del r
            events[i] = (start, end)
        torch.cuda.synchronize(self.device)
        return {i: s.elapsed_time(e) / 1e3 for i, (s, e) in events.items()}

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)


def time_interleaved(clock: _Clock, fns: list[Callable[[], Any]], before=None, *, budget: float,
                     min_rounds: int, max_rounds: int, warmup: int) -> list[list[float]]:
    """Per-call times (seconds) of each of ``fns``, run interleaved in alternating order."""
    n = len(fns)
    fwd, rev = list(range(n)), list(reversed(range(n)))
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            clock.round(fns, fwd, before)
        t0 = time.perf_counter()
        first = clock.round(fns, fwd, before)
        clock.sync()
        per_round = max(time.perf_counter() - t0, 1e-9)
        rounds = int(min(max_rounds, max(min_rounds, budget / per_round)))
        samples = [[first[i]] for i in range(n)]
        for r in range(1, rounds):
            for i, t in clock.round(fns, rev if r % 2 else fwd, before).items():
                samples[i].append(t)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def _median_iqr(xs: list[float]) -> tuple[float, float]:
    med = statistics.median(xs)
    if len(xs) < 4:
        return med, max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return med, q[2] - q[0]


# ----------------------------------------------------------------------------- the machine


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    if m:
        return m.group(1).strip()
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def llc_bytes() -> int:
    best_level, best = 0, 32 << 20
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return best
    for d in entries:
        if not d.startswith("index"):
            continue
        level, size = _read(f"{base}/{d}/level").strip(), _read(f"{base}/{d}/size").strip()
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        if level.isdigit() and m and int(level) > best_level:
            best_level = int(level)
            best = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]
    return best


def git_sha() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _anon_huge_kib() -> Optional[int]:
    m = re.search(r"AnonHugePages:\s+(\d+) kB", _read("/proc/self/smaps_rollup"))
    return int(m.group(1)) if m else None


def thp_state() -> dict:
    """Is THP in effect for torch's CPU allocations? Allocate and touch a 64 MiB tensor and
    count the huge pages behind it (/proc/self/smaps_rollup)."""
    env = os.environ.get("THP_MEM_ALLOC_ENABLE")
    sysmode = re.search(r"\[(\w+)\]", _read("/sys/kernel/mm/transparent_hugepage/enabled"))
    before = _anon_huge_kib()
    t = torch.empty(16 << 20, dtype=torch.float32)
    t.fill_(1.0)
    after = _anon_huge_kib()
    del t
    huge_mib = None if before is None or after is None else max(0, after - before) / 1024
    return {"env": env, "requested": env == "1", "system_mode": sysmode.group(1) if sysmode else "?",
            "huge_mib_of_64": huge_mib}


def _median_time(fn, reps: int, sync=None) -> float:
    ts = []
    for _ in range(reps):
        if sync:
            sync()
        t0 = time.perf_counter()
        r = fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
        del r
    return statistics.median(ts)


def alloc_probe(quick: bool) -> dict:
    """``x*2`` on 8192x1024 float32: fresh output vs into an existing one (the page-fault cost)."""
    x = torch.randn(8192, 1024)
    out = torch.empty_like(x)
    reps = 7 if quick else 15
    fresh = _median_time(lambda: x * 2, reps)
    into = _median_time(lambda: torch.mul(x, 2, out=out), reps)
    return {"fresh_ms": fresh * 1e3, "into_ms": into * 1e3}


def copy_bandwidth(device: torch.device, quick: bool) -> dict:
    """Read+write bytes per second of a large out-of-cache copy into a preallocated tensor."""
    n = (256 << 20 if device.type == "cuda" else 64 << 20)  # float32 elements: 1 GiB / 256 MiB
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    if device.type == "cuda":
        reps = 20
        dst.copy_(src)
        torch.cuda.synchronize(device)
        ts = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            dst.copy_(src)
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e) / 1e3)
        t = statistics.median(ts)
    else:
        dst.copy_(src)
        t = _median_time(lambda: dst.copy_(src), 5 if quick else 11)
    nbytes = 2 * src.numel() * src.element_size()
    return {"gbps": nbytes / t / 1e9, "mib": src.numel() * src.element_size() >> 20}


def matmul_rate(device: torch.device, quick: bool) -> dict:
    """GFLOP/s of a large matmul into a preallocated output (float32 2048^3 on CPU, bf16 8192^3 on CUDA)."""
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 10
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        n, dtype, reps = 2048, torch.float32, (2 if quick else 5)
        sync = None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)
    t = _median_time(lambda: torch.mm(a, b, out=c), reps, sync)
    return {"gflops": 2 * n ** 3 / t / 1e9, "what": f"{n}^3 {str(dtype).replace('torch.', '')}"}


def fma_peak(quick: bool) -> Optional[dict]:
    """The CPU's arithmetic peak: an FMA loop on registers (minitorch_ext._C.fma_peak), float32
    GFLOP/s on one thread and on torch.get_num_threads() threads; None without the extension."""
    try:
        from minitorch_ext import _C

        iters = 10_000_000 if quick else 40_000_000
        threads = torch.get_num_threads()
        one = _C.fma_peak("float32", 1, iters)
        return {"per_thread": one, "threads": threads,
                "gflops": _C.fma_peak("float32", threads, iters) if threads > 1 else one,
                "float64": _C.fma_peak("float64", threads, iters),
                "isa": _C.build_info().get("cpu_isa", "?")}
    except Exception:
        return None


# ----------------------------------------------------------------------------- backends


def _import_mte():
    import minitorch_ext  # lazily: the extension may not be built yet

    return minitorch_ext


def select_backends(args, device: torch.device) -> tuple[list[str], list[str]]:
    """(backends to time, notes). 'self' in --self-test mode."""
    notes: list[str] = []
    if args.self_test:
        return ["self"], ["--self-test: 'ours' is native torch itself (backend 'self'); speedups "
                          "show the harness's own noise, not minitorch_ext"]
    try:
        mte = _import_mte()
    except Exception as e:  # not built, or broken
        raise SystemExit(f"minitorch_ext.bench: cannot import minitorch_ext ({type(e).__name__}: {e}).\n"
                         f"Build it first (pip install --no-build-isolation -e .), or run with --self-test "
                         f"to check the harness against native torch alone.")
    available = list(mte.available_backends(device.type))
    if args.backend is None:
        wanted = available or ["cpp"]
    elif args.backend == "all":
        wanted = ["cpp", "triton"]
    else:
        wanted = [args.backend]
    chosen = []
    for b in wanted:
        if device.type == "cpu" and b == "triton":
            notes.append("triton: skipped on cpu (Triton runs CPU tensors only through its interpreter, "
                         "far too slow to time; run --device cuda)")
        elif b not in available:
            why = ""
            try:
                why = mte._backend._why_not(b, device.type) or ""
            except Exception:
                pass
            notes.append(f"{b}: skipped, not available for {device.type}" + (f" ({why})" if why else ""))
        else:
            chosen.append(b)
    return chosen, notes


def _backend_ctx(backend: str):
    if backend == "self":
        return contextlib.nullcontext()
    return _import_mte().use_backend(backend)


# ----------------------------------------------------------------------------- running


def _settings(device: torch.device, quick: bool, budget: Optional[float]) -> dict:
    if device.type == "cuda":
        s = dict(budget=0.15 if quick else 0.5, min_rounds=10 if quick else 25,
                 max_rounds=200 if quick else 1000, warmup=3)
    else:
        s = dict(budget=0.3 if quick else 1.5, min_rounds=3 if quick else 7,
                 max_rounds=50 if quick else 300, warmup=1)
    if budget is not None:
        s["budget"] = budget
    return s


def bench_case(family: str, case: Case, backends: list[str], clock: _Clock, settings: dict,
               env: dict, notes: list[str]) -> list[dict]:
    """Time one case for every backend; one row per (backend, native variant)."""
    labels = list(case.native)
    fns = [case.ours] + [case.native[k] for k in labels]
    rows = []
    for backend in backends:
        base = {"family": family, "case": case.case, "dtype": case.dtype, "pass": case.pass_,
                "backend": backend}
        t0 = time.perf_counter()
        try:
            with _backend_ctx(backend):
                if case.check is not None:
                    msg = case.check()
                    base["check"] = "failed: " + msg if msg else "ok"
                    if msg:
                        notes.append(f"CHECK FAILED (marked '!') {family} {case.key} [{backend}]: {msg}")
                        env["failures"] += 1
                # the check has run every side once already: one warm-up call fewer
                warm = dict(settings, warmup=max(0, settings["warmup"] - (case.check is not None)))
                samples = time_interleaved(clock, fns, case.before, **warm)
        except Exception as e:  # one broken kernel must not hide the others' numbers
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            notes.append(f"ERROR {family} {case.key} [{backend}]: {msg}")
            env["failures"] += 1
            for label in labels:
                rows.append({**base, "native": label, "ours_ms": None, "native_ms": None,
                             "speedup": None, "error": msg})
            print(f"  {family:<10} {case.key:<32} {backend:<7} ERROR {msg}", file=sys.stderr, flush=True)
            continue
        gc.collect()
        ours_s, ours_iqr = _median_iqr(samples[0])
        for label, smp in zip(labels, samples[1:]):
            nat_s, nat_iqr = _median_iqr(smp)
            row = {**base, "native": label, "ours_ms": ours_s * 1e3, "native_ms": nat_s * 1e3,
                   "speedup": nat_s / ours_s, "ours_iqr_ms": ours_iqr * 1e3, "native_iqr_ms": nat_iqr * 1e3,
                   "ours_min_ms": min(samples[0]) * 1e3, "native_min_ms": min(smp) * 1e3, "rounds": len(smp)}
            noisy = max(ours_iqr / ours_s, nat_iqr / nat_s) > NOISY
            if noisy:
                env["noisy"] += 1
            row["flags"] = ("!" if base.get("check", "ok") != "ok" else "") + ("~" if noisy else "")
            if case.bytes:
                row["bytes"] = case.bytes
                row["ours_gbps"] = case.bytes / ours_s / 1e9
                row["native_gbps"] = case.bytes / nat_s / 1e9
                row["pct_copy"] = 100 * row["ours_gbps"] / env["copy"]["gbps"]
            if case.flops:
                row["flops"] = case.flops
                row["ours_gflops"] = case.flops / ours_s / 1e9
                row["native_gflops"] = case.flops / nat_s / 1e9
                row["pct_matmul"] = 100 * row["ours_gflops"] / env["matmul"]["gflops"]
                if env.get("fma"):
                    peak = env["fma"]["float64" if case.dtype == "float64" else "gflops"]
                    row["pct_peak"] = 100 * row["ours_gflops"] / peak
            if case.note:
                row["note"] = case.note
            rows.append(row)
        print(f"  {family:<10} {case.key:<32} {backend:<7} {len(samples[0]):4d} rounds "
              f"{time.perf_counter() - t0:5.1f} s", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- output


def _fmt_ms(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 10 else f"{v:.3f}"


_COLUMNS = [  # (title, key, formatter, right-aligned)
    ("case", "case", str, False),
    ("dtype", "dtype", str, False),
    ("pass", "pass", str, False),
    ("backend", "backend", str, False),
    ("native", "native", str, False),
    ("ours ms", "ours_ms", _fmt_ms, True),
    ("native ms", "native_ms", _fmt_ms, True),
    ("speedup", "speedup", lambda v: "-" if v is None else f"{v:.2f}x", True),
    ("", "flags", lambda v: v or "", True),
    ("GB/s", "ours_gbps", lambda v: "-" if v is None else f"{v:.1f}", True),
    ("% copy", "pct_copy", lambda v: "-" if v is None else f"{v:.0f}%", True),
    ("GFLOP/s", "ours_gflops", lambda v: "-" if v is None else f"{v:.1f}", True),
    ("% matmul", "pct_matmul", lambda v: "-" if v is None else f"{v:.0f}%", True),
    ("% peak", "pct_peak", lambda v: "-" if v is None else f"{v:.0f}%", True),
]


def format_table(rows: list[dict]) -> str:
    """A Markdown pipe table (reads as plain text, renders in a results .md)."""
    cols = [c for c in _COLUMNS
            if c[1] not in ("flags", "ours_gbps", "pct_copy", "ours_gflops", "pct_matmul", "pct_peak")
            or any(r.get(c[1]) for r in rows)]
    cells = [[c[0] for c in cols]] + [[c[2](r.get(c[1])) if c[3] else str(r.get(c[1]) or "") for c in cols]
                                      for r in rows]
    widths = [max(len(line[j]) for line in cells) for j in range(len(cols))]

    def line(vals):
        return "| " + " | ".join(v.rjust(w) if c[3] else v.ljust(w) for v, w, c in zip(vals, widths, cols)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if c[3] else ("-" * (w + 2)) for w, c in zip(widths, cols)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(v) for v in cells[1:]])


def format_header(env: dict, families: list[str], settings: dict) -> str:
    dev = env["device"]
    thp = env["thp"]
    if thp["huge_mib_of_64"] is None:
        seen = "huge pages not measurable here"
    else:
        seen = f"a fresh 64 MiB tensor got {thp['huge_mib_of_64']:.0f} MiB of huge pages"
    if thp["requested"]:
        thp_line = (f"on for both sides (THP_MEM_ALLOC_ENABLE=1; {seen}; system THP mode '{thp['system_mode']}')")
        if not thp["huge_mib_of_64"]:
            thp_line += "  WARNING: requested but NOT in effect"
    else:
        thp_line = f"off (--no-thp; THP_MEM_ALLOC_ENABLE={thp['env']}; {seen}; system mode '{thp['system_mode']}')"
    threads = f"{env['threads']} (torch.get_num_threads())"
    if env.get("loadavg"):
        threads += f"; load average at start {env['loadavg']}"
    lines = [
        f"machine:  {env['cpu']}, {env['cores']} cores ({env['usable_cores']} usable), "
        f"last-level cache {env['llc_bytes'] >> 20} MiB" + (f"; GPU {env['gpu']}" if env.get("gpu") else ""),
        f"software: torch {env['torch']}, python {env['python']}, minitorch_ext git {env['git']}"
        + (f", triton {env['triton']}" if env.get("triton") else ""),
        f"threads:  {threads}",
        f"THP:      {thp_line}",
    ]
    if env.get("alloc"):
        a = env["alloc"]
        lines.append(f"alloc:    x*2 on 8192x1024 float32: {a['fresh_ms']:.2f} ms into a fresh output, "
                     f"{a['into_ms']:.2f} ms into an existing one")
    if dev == "cpu":
        mb = os.environ.get("MINITORCH_EXT_CPU_CACHE_MB", "1024")
        lines.append("outputs:  " + (
            f"ours draw large CPU outputs from minitorch_ext's caching allocator (up to {mb} MiB of freed "
            "blocks kept, pages already mapped, as torch's CUDA allocator does); native torch's CPU allocator "
            "maps fresh pages each call. --no-cache gives ours torch's allocator too"
            if mb != "0" else "ours and native both allocate through torch's CPU allocator (--no-cache)"))
    lines.append(f"ceilings: copy {env['copy']['gbps']:.1f} GB/s (read+write, {env['copy']['mib']} MiB copied "
                 f"into a preallocated tensor); matmul {env['matmul']['what']} {env['matmul']['gflops']:.0f} GFLOP/s")
    if env.get("fma"):
        f = env["fma"]
        lines.append(f"peak:     FMA loop on registers ({f['isa']} build): float32 {f['per_thread']:.0f} GFLOP/s per "
                     f"thread, {f['gflops']:.0f} on {f['threads']} threads (float64 {f['float64']:.0f}); bfloat16 "
                     "GEMMs widen to float32 here (no bf16 dot-product path), so their peak is float32's; "
                     "% peak = ours GFLOP/s / that")
    timer = ("CUDA events per call, L2 flushed before each" if dev == "cuda" else "time.perf_counter per call, gc off")
    lines.append(f"method:   ours and native interleaved (alternating order) on the same inputs, median of "
                 f"{settings['min_rounds']}-{settings['max_rounds']} rounds filling {settings['budget']:g} s "
                 f"per case and backend; {timer}")
    lines.append("columns:  speedup = native ms / ours ms; GB/s = bytes that must move (see each family) / ours ms; "
                 "% copy = of the copy bandwidth above; '~' = noisy row (interquartile range over "
                 f"{NOISY:.0%} of the median); '!' = ours disagreed with the reference (see notes)")
    lines = [f"# minitorch_ext bench: {', '.join(families)} on {dev}", ""] + [f"- {x}" for x in lines]
    return "\n".join(lines)


def collect_env(device: torch.device, quick: bool) -> dict:
    env = {
        "device": device.type,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "llc_bytes": llc_bytes(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "git": git_sha(),
        "threads": torch.get_num_threads(),
        "loadavg": _read("/proc/loadavg").split(" ")[0],
        "thp": thp_state(),
        "failures": 0,
        "noisy": 0,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            env["triton"] = triton.__version__
        except Exception:
            pass
    else:
        env["alloc"] = alloc_probe(quick)
    env["copy"] = copy_bandwidth(device, quick)
    env["matmul"] = matmul_rate(device, quick)
    if device.type == "cpu":
        env["fma"] = fma_peak(quick)
    gc.collect()
    return env


def run(args) -> int:
    """Run the families named in ``args`` (the parsed CLI; see ``__main__.build_parser``)."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to torch")
        device = torch.device("cuda", torch.cuda.current_device())
    families = list(FAMILIES) if "all" in args.families else list(dict.fromkeys(args.families))
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f"unknown family {f!r}; known: {', '.join(FAMILIES)}, all")
    pattern = re.compile(args.filter) if args.filter else None

    backends, notes = select_backends(args, device)
    if not backends:
        print("\n".join(notes) or "no backend to time", file=sys.stderr)
        return 2
    settings = _settings(device, args.quick, args.budget)
    ctx = Context(device=device, quick=args.quick, self_test=args.self_test, llc_bytes=llc_bytes(),
                  filter=pattern)
    env = collect_env(device, args.quick)
    print(format_header(env, families, settings), flush=True)

    clock = _Clock(device)
    meta = {"device": env["device"], "threads": env["threads"], "thp": env["thp"]["requested"],
            "copy_gbps": env["copy"]["gbps"], "machine": env["cpu"] + (f" / {env['gpu']}" if env.get("gpu") else ""),
            "torch": env["torch"], "git": env["git"]}
    all_rows = []
    for fam in families:
        rows = []
        for case in get_family(fam)(ctx):
            if pattern is not None and not pattern.search(case.key):
                continue
            rows.extend(bench_case(fam, case, backends, clock, settings, env, notes))
        doc = " ".join((getattr(get_family(fam), "__doc__", None) or "").split())
        print(f"\n## {fam}\n\n" + (f"{doc}\n\n" if doc else "")
              + (format_table(rows) if rows else "(no cases)"), flush=True)
        all_rows.extend({**r, **meta} for r in rows)
    if env["noisy"]:
        notes.append(f"{env['noisy']} of {len(all_rows)} rows had an interquartile range over {NOISY:.0%} of "
                     f"the median (marked '~'): the machine was busy; rerun those before trusting them")
    if notes:
        print("\nNotes:\n\n" + "\n".join(f"- {n}" for n in notes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=1)
            f.write("\n")
        print(f"\nwrote {len(all_rows)} rows to {args.json}")
    return 1 if env["failures"] else 0


def main(argv: Optional[list[str]] = None) -> int:
    """Programmatic entry: ``harness.main(["layernorm", "--quick"])`` (set THP_MEM_ALLOC_ENABLE
    before importing torch yourself, or use ``python -m minitorch_ext.bench``)."""
    from .__main__ import main as cli_main

    return cli_main(argv)


__all__ = ["Case", "Context", "Rotation", "rel_error", "compare_to_reference", "time_interleaved", "run", "main", "format_table"]
