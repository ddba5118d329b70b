"""The shared checker: one battery every op family runs, for every backend.

A family describes itself once, as an `OpSpec`:

* ``ours`` / ``native``: the functional op and torch's (same signature);
* ``samples(rng_seed, backend)``: a list of fixed `Sample`s (small, for gradcheck
  and opcheck), and ``strategy(backend)``: a Hypothesis strategy drawing `Sample`s
  for the parity check (odd sizes, 1, primes, wide rows, non-contiguous and
  expanded inputs, empty batches);
* ``raw_ops(sample)``: (op, args) pairs for `torch.library.opcheck`;
* ``bad_inputs()``: `BadInput`s, each a call that must raise torch's error type
  with a message naming the argument.

A `Sample` holds float64 *master* leaves and a ``build(fn, leaves)`` that applies
the layout (slicing, expanding, reshaping) and calls ``fn``, so gradients flow
back to the leaves whatever the layout. The checks:

1. `check_gradcheck`: torch.autograd.gradcheck in float64 on every leaf that
   requires grad;
2. `check_opcheck`: torch.library.opcheck on every registered op;
3. `check_parity`: forward and every gradient, at a dtype, against native torch;
   tolerance rule (Liger / flash-attention): our max error against a float64
   reference is within ``factor`` x native torch's own error, plus one unit of
   the dtype's resolution at the output's scale (so a native that happens to be
   exact does not demand the impossible);
4. `check_bad_inputs`;
5. every kernel call runs with the poison switch on: outputs start as NaN, so an
   unwritten element fails (3) with a NaN error;
6. `check_compile`: torch.compile(fullgraph=True) of a module equals eager.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor

import minitorch_ext as mte
from minitorch_ext import _poison

__all__ = [
    "Sample", "BadInput", "OpSpec", "backends_for", "poisoned", "check_gradcheck", "check_opcheck",
    "check_parity", "check_bad_inputs", "check_bad_inputs_native", "check_compile", "check_meta",
    "autocast_context", "max_err", "TOLERANCE_FACTOR", "standard_tests",
]

# How far our error may exceed native torch's own error against float64.
TOLERANCE_FACTOR = {torch.float32: 4.0, torch.float16: 2.0, torch.bfloat16: 2.0, torch.float64: 4.0}


@dataclass
class Sample:
    leaves: Dict[str, Optional[Tensor]]          # float64 masters (None: argument absent)
    build: Callable[[Callable, Dict[str, Optional[Tensor]]], Tensor]
    desc: str = ""
    grad_leaves: Sequence[str] = ()              # which leaves get gradients (default: all)
    meta: Dict[str, Any] = field(default_factory=dict)  # family-specific (shapes, layout view)

    def cast(self, dtype: torch.dtype, device, requires_grad: bool,
             leaf_dtypes: Optional[Dict[str, torch.dtype]] = None) -> Dict[str, Optional[Tensor]]:
        """The leaves in `dtype` (per-leaf overrides in `leaf_dtypes`: mixed precision) on `device`."""
        out = {}
        for k, v in self.leaves.items():
            if v is None:
                out[k] = None
                continue
            dt = (leaf_dtypes or {}).get(k, dtype)
            t = v.detach().to(device=device, dtype=dt if v.is_floating_point() else v.dtype)
            if requires_grad and k in self._grad_names() and t.is_floating_point():
                t.requires_grad_(True)
            out[k] = t
        return out

    def _grad_names(self) -> Sequence[str]:
        return self.grad_leaves or [k for k, v in self.leaves.items() if v is not None]

    def __repr__(self) -> str:
        shapes = {k: (tuple(v.shape) if v is not None else None) for k, v in self.leaves.items()}
        return f"Sample({self.desc} {shapes})"


@dataclass
class BadInput:
    call: Callable[[], Any]
    error: Type[BaseException]
    match: str            # regex the message must contain (names the argument)
    desc: str = ""
    native: Optional[Callable[[], Any]] = None  # the same call on torch: must raise `error` too


@dataclass
class OpSpec:
    name: str
    ours: Callable
    native: Callable
    samples: Callable[[str], List[Sample]]                    # backend -> small fixed samples
    strategy: Callable[[str], Any]                            # backend -> hypothesis strategy of Sample
    raw_ops: Callable[..., List[tuple]]   # (sample, backend, device) -> [(op, args)] or [(op, args, kwargs)]
    bad_inputs: Callable[[], List[BadInput]] = lambda: []
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16)
    # mixed precision cases: (dtype, {leaf: dtype}) e.g. (bf16, {"weight": float32})
    mixed: Sequence[Tuple[torch.dtype, Dict[str, torch.dtype]]] = ()
    # (input dtype, autocast dtype) pairs run under torch.autocast(device, autocast dtype)
    autocast: Sequence[Tuple[torch.dtype, torch.dtype]] = ((torch.float32, torch.bfloat16),
                                                          (torch.bfloat16, torch.bfloat16))
    extra: Dict[str, Any] = field(default_factory=dict)


def backends_for(device: str = "cpu") -> List[str]:
    """Every backend this machine can run for `device` (cpp; triton under the interpreter)."""
    return mte.available_backends(device)


@contextlib.contextmanager
def poisoned(on: bool = True):
    """Kernel outputs start as NaN inside this block."""
    prev = _poison.enabled()
    _poison.set_enabled(on)
    try:
        yield
    finally:
        _poison.set_enabled(prev)


def _run(fn, sample: Sample, leaves):
    return sample.build(fn, leaves)


def _outputs_and_grads(fn, sample: Sample, dtype, device, backend: Optional[str], seed: int,
                       leaf_dtypes=None, context=contextlib.nullcontext):
    """Forward output and gradients of every grad leaf for a fixed random grad_output
    (drawn in float64, rounded to the output's dtype). `context()` wraps the forward
    (e.g. torch.autocast)."""
    leaves = sample.cast(dtype, device, requires_grad=True, leaf_dtypes=leaf_dtypes)
    ctx = mte.use_backend(backend) if backend else contextlib.nullcontext()
    with ctx, context():
        out = _run(fn, sample, leaves)
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device=device, dtype=out.dtype)
    names = [k for k in sample._grad_names() if leaves.get(k) is not None and leaves[k].requires_grad]
    grads: Tuple = ()
    if names and out.requires_grad:
        with ctx:
            grads = torch.autograd.grad(out, [leaves[k] for k in names], dy, allow_unused=True)
    return out.detach(), dict(zip(names, grads))


def max_err(a: Optional[Tensor], ref: Optional[Tensor]) -> float:
    """max |a - ref| in float64; NaN anywhere (a poisoned, unwritten element) gives NaN."""
    if a is None or ref is None:
        return 0.0 if a is None and ref is None else float("nan")
    if a.numel() == 0 and ref.numel() == 0:
        return 0.0
    if a.shape != ref.shape:
        raise AssertionError(f"shape mismatch: {tuple(a.shape)} vs reference {tuple(ref.shape)}")
    return (a.detach().double().cpu() - ref.detach().double().cpu()).abs().max().item()


def check_parity(spec: OpSpec, sample: Sample, backend: str, dtype: torch.dtype, device="cpu",
                 factor: Optional[float] = None, seed: int = 0,
                 leaf_dtypes: Optional[Dict[str, torch.dtype]] = None,
                 context: Callable[[], Any] = contextlib.nullcontext) -> Dict[str, Tuple[float, float]]:
    """Forward and every gradient of ours vs native, judged against a float64 reference.

    `leaf_dtypes` gives some leaves another dtype than `dtype` (a bfloat16 input with
    float32 weights); `context()` wraps both forwards (torch.autocast). The output and
    every gradient must also have native's dtype. The tolerance is that of the
    lowest precision among `dtype` and the output's dtype.
    Returns {name: (our_err, native_err)}; raises AssertionError on failure."""
    with poisoned():
        ours, ours_g = _outputs_and_grads(spec.ours, sample, dtype, device, backend, seed, leaf_dtypes, context)
    nat, nat_g = _outputs_and_grads(spec.native, sample, dtype, device, None, seed, leaf_dtypes, context)
    for name, o, n in [("output", ours, nat)] + [(f"grad_{k}", ours_g.get(k), nat_g.get(k)) for k in nat_g]:
        if o is not None and n is not None and o.dtype != n.dtype:
            raise AssertionError(f"{spec.name}[{backend}, {dtype}] {name}: dtype {o.dtype}, torch gives {n.dtype}; "
                                 f"{sample!r}")
    work = min((dtype, ours.dtype), key=lambda d: torch.finfo(d).bits if d != torch.bfloat16 else 15)
    factor = factor or TOLERANCE_FACTOR[work]
    # the reference sees exactly the (rounded) inputs the two runs saw
    # (floating leaves only: a boolean mask stays boolean, not a 0/1 additive mask)
    rounded = Sample({k: (v.to((leaf_dtypes or {}).get(k, dtype)).double()
                          if v is not None and v.is_floating_point() else v)
                      for k, v in sample.leaves.items()},
                     sample.build, sample.desc, sample.grad_leaves, sample.meta)
    # grad_output was drawn in float64 and rounded to the output dtype for ours and
    # native; the reference uses that rounded grad_output in float64
    ref, ref_g = _reference_with_rounded_dy(spec, rounded, ours.dtype, device, seed)
    dtype = work
    report = {}
    pairs = [("output", ours, nat, ref)] + [(f"grad_{k}", ours_g.get(k), nat_g.get(k), ref_g.get(k)) for k in ref_g]
    # float64: native *is* the reference, so only an absolute floor can judge us
    res = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
    for name, o, n, r in pairs:
        eo, en = max_err(o, r), max_err(n, r)
        scale = r.abs().max().item() if (r is not None and r.numel()) else 0.0
        bound = factor * en + res * max(1.0, scale)
        report[name] = (eo, en)
        if not (eo <= bound):
            raise AssertionError(
                f"{spec.name}[{backend}, {dtype}] {name}: our error {eo:.3e} exceeds {factor} x native's "
                f"{en:.3e} + {res:.1e}*scale ({bound:.3e}); {sample!r}")
    return report


def _reference_with_rounded_dy(spec, rounded: Sample, dtype, device, seed):
    leaves = rounded.cast(torch.float64, device, requires_grad=True)
    out = _run(spec.native, rounded, leaves)
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype).to(device=device, dtype=torch.float64)
    names = [k for k in rounded._grad_names() if leaves.get(k) is not None and leaves[k].requires_grad]
    grads = torch.autograd.grad(out, [leaves[k] for k in names], dy, allow_unused=True) if names else ()
    return out.detach(), dict(zip(names, grads))


def check_gradcheck(spec: OpSpec, sample: Sample, backend: str, device="cpu", gradgrad: bool = False) -> None:
    leaves = sample.cast(torch.float64, device, requires_grad=True)
    names = [k for k in sample._grad_names() if leaves.get(k) is not None]

    def f(*ts):
        d = dict(leaves)
        d.update(zip(names, ts))
        with mte.use_backend(backend):
            return _run(spec.ours, sample, d)

    inputs = tuple(leaves[k] for k in names)
    with poisoned():
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=False)
        if gradgrad:
            assert torch.autograd.gradgradcheck(f, inputs)


def check_meta(spec: OpSpec, sample: Sample, backend: str) -> None:
    """On meta tensors (torch.device("meta") model building, FSDP's to_empty) ours gives
    native's output shape and dtype, and backward runs, without touching any data."""
    leaves = sample.cast(torch.float32, "meta", requires_grad=True)
    with mte.use_backend(backend):
        out = _run(spec.ours, sample, leaves)
    nat = _run(spec.native, sample, sample.cast(torch.float32, "meta", requires_grad=True))
    assert out.device.type == "meta", f"{spec.name}: output on {out.device}, expected meta"
    assert out.shape == nat.shape and out.dtype == nat.dtype, \
        f"{spec.name}: meta output {tuple(out.shape)} {out.dtype}, torch {tuple(nat.shape)} {nat.dtype}"
    names = [k for k in sample._grad_names() if leaves.get(k) is not None]
    if names and out.requires_grad:
        with mte.use_backend(backend):
            grads = torch.autograd.grad(out, [leaves[k] for k in names], torch.ones_like(out), allow_unused=True)
        for k, g in zip(names, grads):
            if g is not None:
                assert g.device.type == "meta" and g.shape == leaves[k].shape, f"{spec.name}: grad_{k} on meta"


def autocast_context(device: str, dtype: torch.dtype) -> Callable[[], Any]:
    return lambda: torch.autocast(device_type=device, dtype=dtype)


def check_opcheck(spec: OpSpec, sample: Sample, backend: str, device="cpu") -> None:
    for op, args, *kwargs in spec.raw_ops(sample, backend, device):  # (op, args) or (op, args, kwargs)
        with poisoned():
            torch.library.opcheck(op, args, kwargs[0] if kwargs else None)


def check_bad_inputs(spec: OpSpec, backend: str) -> List[str]:
    """Each bad call raises the expected type with a message matching `match`."""
    seen = []
    for bad in spec.bad_inputs():
        with mte.use_backend(backend):
            try:
                bad.call()
            except bad.error as e:  # noqa: PERF203
                if not re.search(bad.match, str(e)):
                    raise AssertionError(f"{spec.name} {bad.desc}: message {str(e)!r} does not match {bad.match!r}")
                seen.append(bad.desc)
                continue
            except Exception as e:
                raise AssertionError(f"{spec.name} {bad.desc}: raised {type(e).__name__}: {e}, "
                                     f"expected {bad.error.__name__}") from e
        raise AssertionError(f"{spec.name} {bad.desc}: no error raised, expected {bad.error.__name__}")
    return seen


def check_bad_inputs_native(spec: OpSpec) -> int:
    """Each bad call that names its torch twin raises the same error type there:
    the list of refusals is torch's, case by case. Returns how many were compared."""
    n = 0
    for bad in spec.bad_inputs():
        if bad.native is None:
            continue
        try:
            bad.native()
        except bad.error:
            n += 1
            continue
        except Exception as e:
            raise AssertionError(f"{spec.name} {bad.desc}: torch raises {type(e).__name__} ({e}), "
                                 f"we expect {bad.error.__name__}") from e
        raise AssertionError(f"{spec.name} {bad.desc}: torch accepts this call, we refuse it")
    return n


def check_compile(make_model: Callable[[], torch.nn.Module], example: Tensor, backend: str,
                  atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """torch.compile(fullgraph=True) of the model runs and matches eager, forward and backward."""
    torch._dynamo.reset()
    model = make_model()
    with mte.use_backend(backend):
        x1 = example.clone().requires_grad_(True)
        eager = model(x1)
        eager.sum().backward()
        g_eager = [p.grad.clone() for p in model.parameters()] + [x1.grad.clone()]
        model.zero_grad(set_to_none=True)
        compiled = torch.compile(model, fullgraph=True, backend="inductor")
        x2 = example.clone().requires_grad_(True)
        out = compiled(x2)
        out.sum().backward()
        g_comp = [p.grad for p in model.parameters()] + [x2.grad]
    torch.testing.assert_close(out, eager, atol=atol, rtol=rtol)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def standard_tests(spec: OpSpec, make_model: Callable[[], torch.nn.Module], example: Tensor,
                   device: str = "cpu") -> Dict[str, Callable]:
    """The whole battery for one op family as pytest test functions, one per check and
    parametrized over every backend runnable here. A family's test file does

        globals().update(testing.standard_tests(SPEC, small_model, torch.randn(4, 16)))

    and adds only what is particular to it (module state_dict, determinism...)."""
    import pytest
    from hypothesis import given

    backends = backends_for(device)
    n_fixed = len(spec.samples(backends[0] if backends else "cpp"))
    by_backend = pytest.mark.parametrize("backend", backends)

    @by_backend
    @pytest.mark.parametrize("i", range(n_fixed))
    def test_gradcheck(backend, i):
        check_gradcheck(spec, spec.samples(backend)[i], backend, device=device)

    @by_backend
    @pytest.mark.parametrize("i", range(n_fixed))
    def test_opcheck(backend, i):
        check_opcheck(spec, spec.samples(backend)[i], backend, device=device)

    @by_backend
    @pytest.mark.parametrize("dtype", list(spec.dtypes), ids=str)
    def test_parity(backend, dtype):
        @given(spec.strategy(backend))
        def run(sample):
            check_parity(spec, sample, backend, dtype, device=device)

        run()

    @by_backend
    def test_parity_float64(backend):
        for sample in spec.samples(backend):
            check_parity(spec, sample, backend, torch.float64, device=device)

    @by_backend
    def test_bad_inputs(backend):
        assert len(check_bad_inputs(spec, backend)) == len(spec.bad_inputs())

    @by_backend
    def test_compile_fullgraph(backend):
        check_compile(make_model, example.to(device), backend)

    def test_bad_inputs_match_torch():
        # every refusal that names its torch twin is one torch makes too, with our error type
        check_bad_inputs_native(spec)

    @by_backend
    def test_meta(backend):
        for sample in spec.samples(backend):
            check_meta(spec, sample, backend)

    @by_backend
    @pytest.mark.parametrize("case", range(len(spec.mixed)))
    def test_mixed_dtypes(backend, case):
        dtype, leaf_dtypes = spec.mixed[case]
        for sample in spec.samples(backend):
            check_parity(spec, sample, backend, dtype, device=device, leaf_dtypes=leaf_dtypes)

    @by_backend
    @pytest.mark.parametrize("case", range(len(spec.autocast)))
    def test_autocast(backend, case):
        # dtype and values as native torch's under the same autocast (torch's policy for the op)
        in_dtype, ac_dtype = spec.autocast[case]
        for sample in spec.samples(backend):
            check_parity(spec, sample, backend, in_dtype, device=device,
                         context=autocast_context(device, ac_dtype))

    tests = [test_gradcheck, test_opcheck, test_parity, test_parity_float64, test_bad_inputs,
             test_compile_fullgraph, test_bad_inputs_match_torch, test_meta]
    # an op torch gives no mixed-dtype or autocast behaviour has no such cases: no empty (skipped) test
    tests += [test_mixed_dtypes] if spec.mixed else []
    tests += [test_autocast] if spec.autocast else []
    return {f.__name__: f for f in tests}
