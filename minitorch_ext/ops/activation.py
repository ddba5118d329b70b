"""Activation family, Python side: fake kernels, autograd, the Triton ops, the public functionals.

Registered ops (schemas in csrc/ops.cpp for the C++/CUDA kernels, below for Triton):

    torch.ops.minitorch_ext.act_fwd / act_bwd / act_              C++ (CPU), CUDA
    torch.ops.minitorch_ext.softmax_fwd / softmax_bwd
    torch.ops.minitorch_ext.act_fwd_triton / act_bwd_triton / act__triton    Triton
    torch.ops.minitorch_ext.softmax_fwd_triton / softmax_bwd_triton

act_fwd and softmax_fwd get `register_autograd` (backward: act_bwd / softmax_bwd
of the same backend). The in-place forms (relu(x, inplace=True), relu_, ...) run
the mutating op act_ inside an autograd.Function that marks x dirty: the
version counter moves, x keeps its storage, and the backward works from the
output where the derivative allows it (relu, leaky_relu with slope >= 0, tanh,
sigmoid), else from a copy of the input taken before the update (silu,
leaky_relu with a negative slope: what torch's generated in-place autograd
keeps as original_self).

Public functionals with torch.nn.functional's signatures: relu, relu_,
leaky_relu, leaky_relu_, gelu, silu, tanh, sigmoid, softmax, log_softmax
(re-exported by minitorch_ext.nn.functional).
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import _backend
from ._registry import register_autocast_policy, triton_custom_op

_OPS = torch.ops.minitorch_ext

# torch's names of integer dtypes in its "not implemented for 'Long'" errors
_SCALAR_NAMES = {torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
                 torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
                 torch.complex128: "ComplexDouble"}
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def grad_from_output_ok(act: str, slope: float) -> bool:
    """Can act's derivative be computed from its output alone (csrc/common/act_kind.h)?"""
    return act in ("none", "relu", "tanh", "sigmoid") or (act == "leaky_relu" and slope >= 0)


# torch's out-of-place activations save their result for these (relu, tanh,
# sigmoid: the derivative reads the output), their input for the others
_SAVES_OUTPUT = ("none", "relu", "tanh", "sigmoid")


# ---------------------------------------------------------------------------
# fake (meta) kernels: shapes and dtypes only, used by opcheck and torch.compile
# ---------------------------------------------------------------------------

def _fake_act_fwd(input, act, slope):
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)


def _fake_act_bwd(grad_output, saved, act, slope, saved_is_output):
    return torch.empty(saved.shape, dtype=saved.dtype, device=saved.device)


def _fake_act_(self, act, slope):
    return None


def _fake_softmax_fwd(input, dim, log):
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)


def _fake_softmax_bwd(grad_output, output, dim, log):
    return torch.empty(output.shape, dtype=output.dtype, device=output.device)


torch.library.register_fake("minitorch_ext::act_fwd")(_fake_act_fwd)
torch.library.register_fake("minitorch_ext::act_bwd")(_fake_act_bwd)
torch.library.register_fake("minitorch_ext::act_")(_fake_act_)
torch.library.register_fake("minitorch_ext::softmax_fwd")(_fake_softmax_fwd)
torch.library.register_fake("minitorch_ext::softmax_bwd")(_fake_softmax_bwd)


# ---------------------------------------------------------------------------
# Triton ops: minitorch_ext.kernels.act behind the same schemas
# ---------------------------------------------------------------------------

@triton_custom_op("minitorch_ext::act_fwd_triton", mutates_args=(), fake=_fake_act_fwd)
def _act_fwd_triton(input: Tensor, act: str, slope: float) -> Tensor:
    from minitorch_ext.kernels import act as K

    return K.act_fwd(input, act, slope)


@triton_custom_op("minitorch_ext::act_bwd_triton", mutates_args=(), fake=_fake_act_bwd)
def _act_bwd_triton(grad_output: Tensor, saved: Tensor, act: str, slope: float, saved_is_output: bool) -> Tensor:
    from minitorch_ext.kernels import act as K

    return K.act_bwd(grad_output, saved, act, slope, saved_is_output)


@triton_custom_op("minitorch_ext::act__triton", mutates_args=("self",), fake=_fake_act_)
def _act_inplace_triton(self: Tensor, act: str, slope: float) -> None:
    from minitorch_ext.kernels import act as K

    K.act_inplace(self, act, slope)


def _wrap_dim(dim: int, ndim: int) -> int:
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


def _as_rows(t: Tensor, dim: int):
    """t with `dim` moved last, as a contiguous (M, D) matrix, and the moved shape."""
    if t.dim() == 0:
        return t.reshape(1, 1), t.shape
    moved = t.movedim(dim, -1).contiguous()
    D = moved.shape[-1]
    M = 1
    for s in moved.shape[:-1]:
        M *= s
    return moved.view(M, D), moved.shape


def _from_rows(y2d: Tensor, moved_shape, dim: int, ndim: int) -> Tensor:
    if ndim == 0:
        return y2d.reshape(())
    y = y2d.view(moved_shape)
    return y.movedim(-1, dim).contiguous() if dim != ndim - 1 else y


@triton_custom_op("minitorch_ext::softmax_fwd_triton", mutates_args=(), fake=_fake_softmax_fwd)
def _softmax_fwd_triton(input: Tensor, dim: int, log: bool) -> Tensor:
    from minitorch_ext.kernels import act as K

    dim = _wrap_dim(dim, input.dim())
    x2d, shape = _as_rows(input, dim)
    return _from_rows(K.softmax_fwd(x2d, log), shape, dim, input.dim())


@triton_custom_op("minitorch_ext::softmax_bwd_triton", mutates_args=(), fake=_fake_softmax_bwd)
def _softmax_bwd_triton(grad_output: Tensor, output: Tensor, dim: int, log: bool) -> Tensor:
    from minitorch_ext.kernels import act as K

    dim = _wrap_dim(dim, output.dim())
    dy2d, _ = _as_rows(grad_output, dim)
    y2d, shape = _as_rows(output, dim)
    return _from_rows(K.softmax_bwd(dy2d, y2d, log), shape, dim, output.dim())


# ---------------------------------------------------------------------------
# autograd: one wiring per forward op, the backward op of the same backend
# ---------------------------------------------------------------------------

def _wire_act(fwd: str, bwd):
    def setup_context(ctx, inputs, output):
        input, act, slope = inputs
        from_out = act in _SAVES_OUTPUT
        ctx.save_for_backward(output if from_out else input)
        ctx.act, ctx.slope, ctx.from_out = act, slope, from_out

    def backward(ctx, grad_out):
        (saved,) = ctx.saved_tensors
        return bwd()(grad_out, saved, ctx.act, ctx.slope, ctx.from_out), None, None

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _wire_softmax(fwd: str, bwd):
    def setup_context(ctx, inputs, output):
        _, dim, log = inputs
        ctx.save_for_backward(output)
        ctx.dim, ctx.log = dim, log

    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        return bwd()(grad_out, out, ctx.dim, ctx.log), None, None

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


_wire_act("minitorch_ext::act_fwd", lambda: _OPS.act_bwd)
_wire_act("minitorch_ext::act_fwd_triton", lambda: _OPS.act_bwd_triton)
_wire_softmax("minitorch_ext::softmax_fwd", lambda: _OPS.softmax_bwd)
_wire_softmax("minitorch_ext::softmax_fwd_triton", lambda: _OPS.softmax_bwd_triton)

# torch's autocast: softmax/log_softmax are on CUDA's fp32_set_opt_dtype list (a
# float16/bfloat16 input gives a float32 result, unless dtype= is given: see
# _softmax) and on no CPU list; the activations are on no list (fallthrough).
for _name in ("softmax_fwd", "softmax_fwd_triton"):
    register_autocast_policy(f"minitorch_ext::{_name}", cuda="fp32")


class _ActInplace(torch.autograd.Function):
    """x = act(x) in place, differentiable: mark_dirty moves x's version and
    rebases its history; the backward reads the output or a pre-update copy."""

    @staticmethod
    def forward(ctx, x, act, slope, triton):
        from_out = grad_from_output_ok(act, slope)
        original = None if from_out else x.clone()
        (_OPS.act__triton if triton else _OPS.act_)(x, act, slope)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x if from_out else original)
        ctx.act, ctx.slope, ctx.from_out, ctx.triton = act, slope, from_out, triton
        return x

    @staticmethod
    def backward(ctx, grad_out):
        (saved,) = ctx.saved_tensors
        bwd = _OPS.act_bwd_triton if ctx.triton else _OPS.act_bwd
        return bwd(grad_out, saved, ctx.act, ctx.slope, ctx.from_out), None, None, None


# ---------------------------------------------------------------------------
# argument checks (torch's error types and messages)
# ---------------------------------------------------------------------------

def _check_tensor(fn: str, input) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}")


def _not_implemented(fn: str, dtype: torch.dtype):
    name = _SCALAR_NAMES.get(dtype, str(dtype).replace("torch.", ""))
    return NotImplementedError(f'"{fn}" not implemented for \'{name}\'')


def _has_internal_overlap(x: Tensor) -> bool:
    """Some element reached twice (an expanded dim): torch refuses to write such a tensor."""
    return any(st == 0 and sz > 1 for st, sz in zip(x.stride(), x.shape))


def _triton(input: Tensor) -> bool:
    return _backend.resolve(input.device) == "triton"


def _apply(act: str, input: Tensor, slope: float, inplace: bool) -> Tensor:
    triton = _triton(input)
    if not inplace:
        return (_OPS.act_fwd_triton if triton else _OPS.act_fwd)(input, act, slope)
    if _has_internal_overlap(input):
        raise RuntimeError("unsupported operation: more than one element of the written-to tensor refers to a "
                           "single memory location. Please clone() the tensor before performing the operation.")
    if torch.is_grad_enabled() and input.requires_grad:
        if input.is_leaf:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        return _ActInplace.apply(input, act, slope, triton)
    (_OPS.act__triton if triton else _OPS.act_)(input, act, slope)
    return input


def _float_only(fn: str, input: Tensor, kernel: str) -> None:
    if input.dtype not in _FLOATS:
        raise _not_implemented(kernel, input.dtype)


# ---------------------------------------------------------------------------
# public entry points (torch.nn.functional signatures)
# ---------------------------------------------------------------------------

def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """Same as torch.nn.functional.relu (integer tensors too, as torch), on our kernels."""
    _check_tensor("relu", input)
    if input.dtype == torch.bool:
        raise NotImplementedError("Boolean inputs not supported for relu")
    if input.is_complex():
        raise NotImplementedError("clamp is not supported for complex types")
    return _apply("relu", input, 0.0, inplace)


def relu_(input: Tensor) -> Tensor:
    """Same as torch.nn.functional.relu_ (torch.relu_)."""
    return relu(input, inplace=True)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """Same as torch.nn.functional.leaky_relu, on our kernels."""
    _check_tensor("leaky_relu", input)
    if not isinstance(negative_slope, numbers.Number) or isinstance(negative_slope, complex):
        raise TypeError(f"leaky_relu(): argument 'negative_slope' (position 2) must be Number, not "
                        f"{type(negative_slope).__name__}")
    _float_only("leaky_relu", input, "leaky_relu")
    return _apply("leaky_relu", input, float(negative_slope), inplace)


def leaky_relu_(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """Same as torch.nn.functional.leaky_relu_."""
    return leaky_relu(input, negative_slope, inplace=True)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Same as torch.nn.functional.gelu (approximate='none' or 'tanh'), on our kernels."""
    _check_tensor("gelu", input)
    if not isinstance(approximate, str):
        raise TypeError(f"gelu(): argument 'approximate' must be str, not {type(approximate).__name__}")
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    _float_only("gelu", input, "gelu")
    return _apply("gelu" if approximate == "none" else "gelu_tanh", input, 0.0, False)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """Same as torch.nn.functional.silu, on our kernels."""
    _check_tensor("silu", input)
    _float_only("silu", input, "silu")
    return _apply("silu", input, 0.0, inplace)


def _promote(input: Tensor) -> Tensor:
    # tanh/sigmoid of an integer or bool tensor: torch computes in the default float dtype
    if input.dtype in _FLOATS:
        return input
    if input.is_complex():
        raise _not_implemented("tanh", input.dtype)
    return input.to(torch.get_default_dtype())


def tanh(input: Tensor) -> Tensor:
    """Same as torch.tanh / torch.nn.functional.tanh, on our kernels."""
    _check_tensor("tanh", input)
    return _apply("tanh", _promote(input), 0.0, False)


def sigmoid(input: Tensor) -> Tensor:
    """Same as torch.sigmoid / torch.nn.functional.sigmoid, on our kernels."""
    _check_tensor("sigmoid", input)
    return _apply("sigmoid", _promote(input), 0.0, False)


def _softmax(fn: str, input: Tensor, dim: Optional[int], stacklevel: int, dtype, log: bool) -> Tensor:
    _check_tensor(fn, input)
    if dim is None:
        dim = torch.nn.functional._get_softmax_dim(fn, input.dim(), stacklevel + 1)
    if dtype is not None:
        input = input.to(dtype)  # as torch: the input is cast before the operation
    if input.dtype not in _FLOATS:
        raise _not_implemented(f"{fn}_lastdim_kernel_impl", input.dtype)
    dim = _wrap_dim(int(dim), input.dim())
    op = _OPS.softmax_fwd_triton if _triton(input) else _OPS.softmax_fwd
    if dtype is not None and input.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # torch's fp32_set_opt_dtype policy keeps an explicit dtype: no float32 cast
        with torch.autocast("cuda", enabled=False):
            return op(input, dim, log)
    return op(input, dim, log)


def softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3,
            dtype: Optional[torch.dtype] = None) -> Tensor:
    """Same as torch.nn.functional.softmax (dim=None: torch's legacy choice, with its warning)."""
    return _softmax("softmax", input, dim, _stacklevel, dtype, False)


def log_softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3,
                dtype: Optional[torch.dtype] = None) -> Tensor:
    """Same as torch.nn.functional.log_softmax (dim=None: torch's legacy choice, with its warning)."""
    return _softmax("log_softmax", input, dim, _stacklevel, dtype, True)


__all__ = ["relu", "relu_", "leaky_relu", "leaky_relu_", "gelu", "silu", "tanh", "sigmoid", "softmax",
           "log_softmax", "grad_from_output_ok"]
