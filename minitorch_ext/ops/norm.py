"""Norm family, Python side: fake kernels, autograd, the Triton ops, backend choice.

Registered ops (schemas in csrc/ops.cpp for the C++/CUDA kernels, below for Triton):

    torch.ops.minitorch_ext.layer_norm_fwd / layer_norm_bwd          C++ (CPU), CUDA
    torch.ops.minitorch_ext.rms_norm_fwd / rms_norm_bwd
    torch.ops.minitorch_ext.layer_norm_fwd_triton / ..._bwd_triton   Triton
    torch.ops.minitorch_ext.rms_norm_fwd_triton / ..._bwd_triton

Each forward op gets `register_autograd`, whose backward calls the matching
backward op, so the same wiring serves every backend. The public entry points
are `layer_norm` and `rms_norm` (re-exported by minitorch_ext.nn.functional).
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _backend
from ._registry import register_autocast_policy, triton_custom_op

_OPS = torch.ops.minitorch_ext


# ---------------------------------------------------------------------------
# shapes and argument checks (shared by every backend, torch's error types)
# ---------------------------------------------------------------------------

def _canon_shape(normalized_shape) -> List[int]:
    if isinstance(normalized_shape, numbers.Integral):
        return [int(normalized_shape)]
    return [int(s) for s in normalized_shape]


def _rows_cols(input: Tensor, normalized_shape: Sequence[int]) -> Tuple[int, int]:
    n = math.prod(normalized_shape)
    m = input.numel() // n if n else 0
    return m, n


def _check(fn: str, input, normalized_shape, weight, bias=None):
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}(): argument 'input' must be Tensor, not {type(input).__name__}")
    if not input.is_floating_point():
        raise RuntimeError(f"{fn}(): input: expected a floating point tensor, got dtype {input.dtype}")
    nd = len(normalized_shape)
    if nd == 0:
        raise RuntimeError(f"{fn}(): normalized_shape: expected at least one dimension")
    if fn == "rms_norm" and input.dim() < nd:
        # torch's rms_norm raises ValueError here (layer_norm a RuntimeError, below)
        raise ValueError(f"{fn}(): input: given normalized_shape={list(normalized_shape)}, expected input "
                         f"with at least {nd} dimensions, but got input of size {list(input.shape)}")
    if input.dim() < nd or list(input.shape[input.dim() - nd:]) != list(normalized_shape):
        raise RuntimeError(
            f"{fn}(): input: given normalized_shape={list(normalized_shape)}, expected input with shape "
            f"[*, {', '.join(map(str, normalized_shape))}], but got input of size {list(input.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}(): argument '{name}' must be Tensor or None, not {type(t).__name__}")
        if list(t.shape) != list(normalized_shape):
            raise RuntimeError(
                f"{fn}(): {name}: expected shape {list(normalized_shape)} (normalized_shape), but got "
                f"{name} of shape {list(t.shape)}")
        if t.device != input.device:
            raise RuntimeError(
                f"{fn}(): {name}: expected all tensors to be on the same device, but {name} is on "
                f"{t.device} and input on {input.device}")
        if not t.is_floating_point():
            raise RuntimeError(f"{fn}(): {name}: expected a floating point tensor, got dtype {t.dtype}")
    _check_param_dtypes(fn, input, weight, bias)


_REDUCED = (torch.bfloat16, torch.float16)


def _check_param_dtypes(fn: str, input: Tensor, weight, bias) -> None:
    """Mixed precision as torch allows it (csrc/common/checks.h, check_param_dtypes):
    layer_norm takes parameters of the input's dtype, or float32 ones with a
    bfloat16/float16 input (autocast, float32 master weights); rms_norm takes any
    floating dtype. Output in the input's dtype, each gradient in its parameter's."""
    if fn == "rms_norm":
        return
    present = [(n, t) for n, t in (("weight", weight), ("bias", bias)) if t is not None]
    for name, t in present:
        if t.dtype != input.dtype and not (t.dtype == torch.float32 and input.dtype in _REDUCED):
            extra = " or torch.float32" if input.dtype in _REDUCED else ""
            raise RuntimeError(f"{fn}(): {name}: expected dtype {input.dtype} (the dtype of input){extra}, "
                               f"got {t.dtype}")
    if len(present) == 2 and weight.dtype != bias.dtype:
        raise RuntimeError(f"{fn}(): bias: expected dtype {weight.dtype} (the dtype of weight), got {bias.dtype}")


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# fake (meta) kernels: shapes and dtypes only, used by opcheck and torch.compile
# ---------------------------------------------------------------------------

def _fake_ln_fwd(input, normalized_shape, weight, bias, eps):
    m, _ = _rows_cols(input, normalized_shape)
    sd = _stat_dtype(input.dtype)
    out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    return out, input.new_empty((m,), dtype=sd), input.new_empty((m,), dtype=sd)


def _fake_ln_bwd(grad_output, input, normalized_shape, mean, rstd, weight, bias):
    gx = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    gw = torch.empty_like(weight) if weight is not None else input.new_empty((0,))
    gb = torch.empty_like(bias) if bias is not None else input.new_empty((0,))
    return gx, gw, gb


def _fake_rms_fwd(input, normalized_shape, weight, eps):
    m, _ = _rows_cols(input, normalized_shape)
    out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    return out, input.new_empty((m,), dtype=_stat_dtype(input.dtype))


def _fake_rms_bwd(grad_output, input, normalized_shape, rstd, weight):
    gx = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    gw = torch.empty_like(weight) if weight is not None else input.new_empty((0,))
    return gx, gw


torch.library.register_fake("minitorch_ext::layer_norm_fwd")(_fake_ln_fwd)
torch.library.register_fake("minitorch_ext::layer_norm_bwd")(_fake_ln_bwd)
torch.library.register_fake("minitorch_ext::rms_norm_fwd")(_fake_rms_fwd)
torch.library.register_fake("minitorch_ext::rms_norm_bwd")(_fake_rms_bwd)


# ---------------------------------------------------------------------------
# Triton ops: the kernels in minitorch_ext.kernels.norm behind the same schemas
# ---------------------------------------------------------------------------

def _flat(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous().view(-1)


@triton_custom_op("minitorch_ext::layer_norm_fwd_triton", mutates_args=(), fake=_fake_ln_fwd)
def _ln_fwd_triton(input: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                   bias: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import norm as K

    m, n = _rows_cols(input, normalized_shape)
    y, mean, rstd = K.layer_norm_fwd(input.contiguous().reshape(m, n), _flat(weight), _flat(bias), eps)
    return y.view(input.shape), mean, rstd


@triton_custom_op("minitorch_ext::layer_norm_bwd_triton", mutates_args=(), fake=_fake_ln_bwd)
def _ln_bwd_triton(grad_output: Tensor, input: Tensor, normalized_shape: List[int], mean: Tensor,
                   rstd: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import norm as K

    m, n = _rows_cols(input, normalized_shape)
    dx, dw, db = K.layer_norm_bwd(grad_output.contiguous().reshape(m, n), input.contiguous().reshape(m, n),
                                  mean, rstd, _flat(weight), _flat(bias))
    dw = input.new_empty((0,)) if dw is None else dw.view(weight.shape)
    db = input.new_empty((0,)) if db is None else db.view(bias.shape)
    return dx.view(input.shape), dw, db


@triton_custom_op("minitorch_ext::rms_norm_fwd_triton", mutates_args=(), fake=_fake_rms_fwd)
def _rms_fwd_triton(input: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                    eps: float) -> Tuple[Tensor, Tensor]:
    from minitorch_ext.kernels import norm as K

    m, n = _rows_cols(input, normalized_shape)
    y, rstd = K.rms_norm_fwd(input.contiguous().reshape(m, n), _flat(weight), eps)
    return y.view(input.shape), rstd


@triton_custom_op("minitorch_ext::rms_norm_bwd_triton", mutates_args=(), fake=_fake_rms_bwd)
def _rms_bwd_triton(grad_output: Tensor, input: Tensor, normalized_shape: List[int], rstd: Tensor,
                    weight: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    from minitorch_ext.kernels import norm as K

    m, n = _rows_cols(input, normalized_shape)
    dx, dw = K.rms_norm_bwd(grad_output.contiguous().reshape(m, n), input.contiguous().reshape(m, n),
                            rstd, _flat(weight))
    dw = input.new_empty((0,)) if dw is None else dw.view(weight.shape)
    return dx.view(input.shape), dw


# ---------------------------------------------------------------------------
# autograd: one wiring per forward op, the backward op of the same backend
# ---------------------------------------------------------------------------

def _none_if_empty(g: Tensor, ref: Optional[Tensor]) -> Optional[Tensor]:
    return None if ref is None else g


def _wire_layer_norm(fwd: str, bwd):
    def setup_context(ctx, inputs, output):
        input, normalized_shape, weight, bias, eps = inputs
        _, mean, rstd = output
        ctx.save_for_backward(input, mean, rstd, weight, bias)
        ctx.normalized_shape = normalized_shape
        ctx.mark_non_differentiable(mean, rstd)

    def backward(ctx, grad_out, _gmean, _grstd):
        input, mean, rstd, weight, bias = ctx.saved_tensors
        gx, gw, gb = bwd()(grad_out, input, ctx.normalized_shape, mean, rstd, weight, bias)
        return (gx if ctx.needs_input_grad[0] else None, None,
                _none_if_empty(gw, weight) if ctx.needs_input_grad[2] else None,
                _none_if_empty(gb, bias) if ctx.needs_input_grad[3] else None, None)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _wire_rms_norm(fwd: str, bwd):
    def setup_context(ctx, inputs, output):
        input, normalized_shape, weight, eps = inputs
        _, rstd = output
        ctx.save_for_backward(input, rstd, weight)
        ctx.normalized_shape = normalized_shape
        ctx.mark_non_differentiable(rstd)

    def backward(ctx, grad_out, _grstd):
        input, rstd, weight = ctx.saved_tensors
        gx, gw = bwd()(grad_out, input, ctx.normalized_shape, rstd, weight)
        return (gx if ctx.needs_input_grad[0] else None, None,
                _none_if_empty(gw, weight) if ctx.needs_input_grad[2] else None, None)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


_wire_layer_norm("minitorch_ext::layer_norm_fwd", lambda: _OPS.layer_norm_bwd)
_wire_layer_norm("minitorch_ext::layer_norm_fwd_triton", lambda: _OPS.layer_norm_bwd_triton)
_wire_rms_norm("minitorch_ext::rms_norm_fwd", lambda: _OPS.rms_norm_bwd)
_wire_rms_norm("minitorch_ext::rms_norm_fwd_triton", lambda: _OPS.rms_norm_bwd_triton)

# torch's autocast: layer_norm and rms_norm are on CUDA's float32 list and on no
# CPU list (a bfloat16 input stays bfloat16 under CPU autocast)
for _name in ("layer_norm_fwd", "layer_norm_fwd_triton", "rms_norm_fwd", "rms_norm_fwd_triton"):
    register_autocast_policy(f"minitorch_ext::{_name}", cuda="fp32")


# ---------------------------------------------------------------------------
# public entry points (torch.nn.functional signatures)
# ---------------------------------------------------------------------------

def layer_norm(input: Tensor, normalized_shape, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """Same as torch.nn.functional.layer_norm, on our kernels."""
    shape = _canon_shape(normalized_shape)
    _check("layer_norm", input, shape, weight, bias)
    if _backend.resolve(input.device) == "triton":
        op = _OPS.layer_norm_fwd_triton
    else:
        op = _OPS.layer_norm_fwd
    return op(input, shape, weight, bias, float(eps))[0]


def rms_norm(input: Tensor, normalized_shape, weight: Optional[Tensor] = None,
             eps: Optional[float] = None) -> Tensor:
    """Same as torch.nn.functional.rms_norm (eps=None: torch.finfo(input.dtype).eps), on our kernels."""
    shape = _canon_shape(normalized_shape)
    _check("rms_norm", input, shape, weight)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    if _backend.resolve(input.device) == "triton":
        op = _OPS.rms_norm_fwd_triton
    else:
        op = _OPS.rms_norm_fwd
    return op(input, shape, weight, float(eps))[0]
