"""Dense family, Python side: the GEMM core and Linear with a fused activation.

Registered ops (schemas in csrc/ops.cpp for the C++/CUDA kernels, below for Triton):

    torch.ops.minitorch_ext.gemm                          C++ (CPU), CUDA
    torch.ops.minitorch_ext.linear_fwd / linear_bwd
    torch.ops.minitorch_ext.gemm_triton                   Triton
    torch.ops.minitorch_ext.linear_fwd_triton / linear_bwd_triton

`linear_fwd` gets `register_autograd`, whose backward calls the matching
`linear_bwd`, so one wiring serves every backend. The public entry points are
`linear` (re-exported by minitorch_ext.nn.functional, torch's signature plus
`activation=`) and `gemm` (the raw core, no autograd: the building block that
conv, attention and the RNN cells use from C++).
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from ._registry import register_autocast_policy, triton_custom_op

_OPS = torch.ops.minitorch_ext

ACTIVATIONS = ("none", "relu", "leaky_relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid")


def parse_activation(activation) -> Tuple[str, float]:
    """`activation=` as the kernels take it: (name, slope).

    None or "none"; "relu"; "leaky_relu" (slope 0.01, torch's default) or
    ("leaky_relu", slope); "gelu"; "gelu_tanh" (or ("gelu", "tanh"), torch's
    approximate="tanh"); "silu"; "tanh"; "sigmoid"."""
    if activation is None:
        return "none", 0.0
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"linear(): activation: expected one of {', '.join(map(repr, ACTIVATIONS))} "
                             f"or ('leaky_relu', slope), got {activation!r}")
        return activation, 0.01 if activation == "leaky_relu" else 0.0
    if isinstance(activation, (tuple, list)) and len(activation) == 2:
        name, arg = activation
        if name == "leaky_relu" and isinstance(arg, numbers.Real) and not isinstance(arg, bool):
            return "leaky_relu", float(arg)
        if name == "gelu" and arg in ("none", "tanh"):
            return ("gelu" if arg == "none" else "gelu_tanh"), 0.0
    raise ValueError(f"linear(): activation: expected one of {', '.join(map(repr, ACTIVATIONS))}, "
                     f"('leaky_relu', slope) or ('gelu', 'none'|'tanh'), got {activation!r}")


# ---------------------------------------------------------------------------
# argument checks (shared by every backend; torch's wording and error types)
# ---------------------------------------------------------------------------

def _check_linear(input, weight, bias) -> None:
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"linear(): argument '{name}' (position {1 if name == 'input' else 2}) must be "
                            f"Tensor, not {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"linear(): argument 'bias' must be Tensor or None, not {type(bias).__name__}")
    if input.dim() == 0 or weight.dim() == 0:
        raise RuntimeError(f"both arguments to linear need to be at least 1D, but they are {input.dim()}D "
                           f"and {weight.dim()}D")
    if weight.dim() > 2:
        raise RuntimeError(f"linear(): weight: expected a 1-D or 2-D tensor (out_features, in_features), "
                           f"got {weight.dim()}-D of size {list(weight.shape)}")
    k = input.shape[-1]
    n, kw = (weight.shape[0], weight.shape[1]) if weight.dim() == 2 else (1, weight.shape[0])
    if k != kw:
        m = input.numel() // k if k else 0
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({m}x{k} and {kw}x{n})")
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise RuntimeError(f"linear(): {name}: expected a floating point tensor, got dtype {t.dtype}")
    if weight.dtype != input.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {_c10(input.dtype)} != "
                           f"{_c10(weight.dtype)}")
    if bias is not None and bias.dtype != input.dtype:
        raise RuntimeError(f"linear(): bias: expected dtype {input.dtype} (the dtype of input), got {bias.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise RuntimeError(f"linear(): {name}: expected all tensors to be on the same device, but {name} is on "
                               f"{t.device} and input on {input.device}")
    if bias is not None and not (bias.dim() <= 1 and bias.numel() in (1, n)):
        raise RuntimeError(f"linear(): bias: expected shape [{n}] (out_features), [1] or [], got "
                           f"{list(bias.shape)}")


def _c10(dtype: torch.dtype) -> str:
    return {torch.float32: "float", torch.float64: "double", torch.bfloat16: "c10::BFloat16",
            torch.float16: "c10::Half"}.get(dtype, str(dtype).replace("torch.", ""))


# ---------------------------------------------------------------------------
# fake (meta) kernels: shapes and dtypes only, used by opcheck and torch.compile
# ---------------------------------------------------------------------------

def _fake_gemm(a, b, c=None, *, alpha=1.0, beta=1.0, bias=None, bias_dim=1, act="none", slope=0.01):
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "gemm: a and b must be 2-D")
    torch._check(a.shape[1] == b.shape[0],
                 lambda: f"gemm: a and b shapes cannot be multiplied ({a.shape[0]}x{a.shape[1]} and "
                         f"{b.shape[0]}x{b.shape[1]})")
    return a.new_empty((a.shape[0], b.shape[1]))


def _fake_linear_fwd(input, weight, bias, act, slope):
    out = input.new_empty((*input.shape[:-1], weight.shape[0]))
    pre = torch.empty_like(out) if act != "none" else input.new_empty((0,))
    return out, pre


def _fake_linear_bwd(grad_output, input, weight, preact, act, slope, output_mask):
    gx = torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0] else input.new_empty((0,))
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else input.new_empty((0,))
    gb = weight.new_empty((weight.shape[0],)) if output_mask[2] else input.new_empty((0,))
    return gx, gw, gb


torch.library.register_fake("minitorch_ext::gemm")(_fake_gemm)
torch.library.register_fake("minitorch_ext::linear_fwd")(_fake_linear_fwd)
torch.library.register_fake("minitorch_ext::linear_bwd")(_fake_linear_bwd)


# ---------------------------------------------------------------------------
# Triton ops: the kernels in minitorch_ext.kernels.gemm behind the same schemas
# ---------------------------------------------------------------------------

def _empty0(t: Tensor) -> Tensor:
    return t.new_empty((0,))


@triton_custom_op("minitorch_ext::gemm_triton", mutates_args=(),
                  fake=lambda a, b, c=None, alpha=1.0, beta=1.0, bias=None, bias_dim=1, act="none", slope=0.01:
                  a.new_empty((a.shape[0], b.shape[1])))
def _gemm_triton(a: Tensor, b: Tensor, c: Optional[Tensor] = None, alpha: float = 1.0, beta: float = 1.0,
                 bias: Optional[Tensor] = None, bias_dim: int = 1, act: str = "none",
                 slope: float = 0.01) -> Tensor:
    from minitorch_ext.kernels import gemm as K

    return K.gemm(a, b, c, alpha=alpha, beta=beta, bias=bias, bias_dim=bias_dim, act=act, slope=slope)


@triton_custom_op("minitorch_ext::linear_fwd_triton", mutates_args=(), fake=_fake_linear_fwd)
def _linear_fwd_triton(input: Tensor, weight: Tensor, bias: Optional[Tensor], act: str,
                       slope: float) -> Tuple[Tensor, Tensor]:
    from minitorch_ext.kernels import gemm as K

    lead, k, n = input.shape[:-1], input.shape[-1], weight.shape[0]
    m = math.prod(lead)
    out, pre = K.linear_fwd(input.reshape(m, k), weight, bias, act, slope)
    out = out.view(*lead, n)
    pre = pre.view(*lead, n) if pre is not None else _empty0(input)
    return out, pre


@triton_custom_op("minitorch_ext::linear_bwd_triton", mutates_args=(), fake=_fake_linear_bwd)
def _linear_bwd_triton(grad_output: Tensor, input: Tensor, weight: Tensor, preact: Tensor, act: str,
                       slope: float, output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import gemm as K

    k, n = input.shape[-1], weight.shape[0]
    m = math.prod(input.shape[:-1])
    pre = preact.reshape(m, n) if act != "none" else None
    dx, dw, db = K.linear_bwd(grad_output.reshape(m, n), input.reshape(m, k), weight, pre, act, slope,
                              tuple(bool(m) for m in output_mask))
    dx = dx.view(input.shape) if dx is not None else _empty0(input)
    return dx, (dw if dw is not None else _empty0(input)), (db if db is not None else _empty0(input))


# ---------------------------------------------------------------------------
# autograd: one wiring per forward op, the backward op of the same backend
# ---------------------------------------------------------------------------

def _wire_linear(fwd: str, bwd):
    def setup_context(ctx, inputs, output):
        input, weight, bias, act, slope = inputs
        _, preact = output
        ctx.save_for_backward(input, weight, preact)
        ctx.act, ctx.slope, ctx.has_bias = act, slope, bias is not None
        ctx.mark_non_differentiable(preact)

    def backward(ctx, grad_out, _gpre):
        input, weight, preact = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [bool(need[0]), bool(need[1]), bool(need[2]) and ctx.has_bias]
        gx, gw, gb = bwd()(grad_out, input, weight, preact, ctx.act, ctx.slope, mask)
        return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


_wire_linear("minitorch_ext::linear_fwd", lambda: _OPS.linear_bwd)
_wire_linear("minitorch_ext::linear_fwd_triton", lambda: _OPS.linear_bwd_triton)

# torch's autocast runs linear in the lower precision on both devices
for _name in ("linear_fwd", "linear_fwd_triton", "gemm", "gemm_triton"):
    register_autocast_policy(f"minitorch_ext::{_name}", cpu="lower", cuda="lower")


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------

def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, activation=None) -> Tensor:
    """Same as torch.nn.functional.linear (y = x W^T + b over the last dim of x), on our GEMM.

    ``activation=`` fuses an activation into the GEMM's epilogue, forward and
    backward: ``linear(x, w, b, activation="gelu")`` equals
    ``F.gelu(F.linear(x, w, b))`` in one pass over the output (see
    `parse_activation` for the names)."""
    act, slope = parse_activation(activation)
    _check_linear(input, weight, bias)
    squeeze_in = input.dim() == 1
    squeeze_out = weight.dim() == 1
    x = input.unsqueeze(0) if squeeze_in else input
    w = weight.unsqueeze(0) if squeeze_out else weight
    b = bias
    if b is not None and tuple(b.shape) != (w.shape[0],):  # a [] or [1] bias, broadcast as torch does
        b = b.reshape(()).expand(w.shape[0]).contiguous()
    op = _OPS.linear_fwd_triton if _backend.resolve(x.device) == "triton" else _OPS.linear_fwd
    out = op(x, w, b, act, float(slope))[0]
    if squeeze_out:
        out = out.squeeze(-1)
    if squeeze_in:
        out = out.squeeze(0)
    return out


def gemm(a: Tensor, b: Tensor, c: Optional[Tensor] = None, *, alpha: float = 1.0, beta: float = 1.0,
         bias: Optional[Tensor] = None, bias_dim: int = 1, activation=None) -> Tensor:
    """The raw GEMM core: act(alpha * a @ b + beta * c + bias) for 2-D a, b (any strides), no autograd."""
    act, slope = parse_activation(activation)
    op = _OPS.gemm_triton if _backend.resolve(a.device) == "triton" else _OPS.gemm
    return op(a, b, c, alpha=float(alpha), beta=float(beta), bias=bias, bias_dim=int(bias_dim), act=act,
              slope=float(slope))
