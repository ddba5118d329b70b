"""Pool family, Python side: fake kernels, autograd, torch's argument semantics, the public functionals.

Registered ops (schemas and semantics in csrc/ops.cpp, C++ kernels in csrc/pool/pool_cpu.cpp):

    torch.ops.minitorch_ext.max_pool2d_fwd / max_pool2d_bwd                C++ (CPU)
    torch.ops.minitorch_ext.avg_pool2d_fwd / avg_pool2d_bwd
    torch.ops.minitorch_ext.adaptive_avg_pool2d_fwd / adaptive_avg_pool2d_bwd
    torch.ops.minitorch_ext.<each of the above>_triton     Triton (kernels/pool.py), same schemas

The kernels see [N, C, H, W]; here unbatched inputs get a batch dim of 1 and the
1-D pools become 2-D pools with H = 1. Each forward op gets `register_autograd`
(backward: the matching _bwd op). The output keeps the input's memory format.

Public functionals with torch.nn.functional's signatures: max_pool2d, avg_pool2d,
adaptive_avg_pool2d, max_pool1d, avg_pool1d, adaptive_avg_pool1d (re-exported by
minitorch_ext.nn.functional). The active backend picks the ops (minitorch_ext._backend):
"triton" the Triton ones, "cpp" the C++ ones; a CUDA tensor on "cpp" without a
registered CUDA pooling kernel is a clear NotImplementedError, never a silent
fall-back to torch.
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _backend
from ._registry import triton_custom_op

_OPS = torch.ops.minitorch_ext
_FLOATS = (torch.float32, torch.float64, torch.bfloat16)
_SCALAR_NAMES = {torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
                 torch.uint8: "Byte", torch.bool: "Bool", torch.float16: "Half"}


# ---------------------------------------------------------------------------
# output sizes (torch's pooling_output_shape) and layouts
# ---------------------------------------------------------------------------

def pool_out_size(size: int, k: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: under ceil_mode the last window must start inside
    the input or its left padding."""
    out = (size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _empty4(x: Tensor, sizes, dtype=None) -> Tensor:
    # the kernels keep input.suggest_memory_format(); fake tensors follow the same rule
    fmt = torch._prims_common.suggest_memory_format(x)
    return torch.empty(sizes, dtype=dtype or x.dtype, device=x.device).contiguous(memory_format=fmt)


# ---------------------------------------------------------------------------
# fake (meta) kernels
# ---------------------------------------------------------------------------

def _fake_max_fwd(input, kernel_size, stride, padding, dilation, ceil_mode):
    N, C, H, W = input.shape
    Ho = pool_out_size(H, kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    Wo = pool_out_size(W, kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    return _empty4(input, (N, C, Ho, Wo)), _empty4(input, (N, C, Ho, Wo), torch.int64)


def _fake_max_bwd(grad_output, input, indices):
    return _empty4(input, input.shape)


def _fake_avg_fwd(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    N, C, H, W = input.shape
    Ho = pool_out_size(H, kernel_size[0], padding[0], stride[0], 1, ceil_mode)
    Wo = pool_out_size(W, kernel_size[1], padding[1], stride[1], 1, ceil_mode)
    return _empty4(input, (N, C, Ho, Wo))


def _fake_avg_bwd(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                  divisor_override):
    return _empty4(input, input.shape)


def _fake_adaptive_fwd(input, output_size):
    N, C = input.shape[:2]
    return _empty4(input, (N, C, output_size[0], output_size[1]))


def _fake_adaptive_bwd(grad_output, input):
    return _empty4(input, input.shape)


torch.library.register_fake("minitorch_ext::max_pool2d_fwd")(_fake_max_fwd)
torch.library.register_fake("minitorch_ext::max_pool2d_bwd")(_fake_max_bwd)
torch.library.register_fake("minitorch_ext::avg_pool2d_fwd")(_fake_avg_fwd)
torch.library.register_fake("minitorch_ext::avg_pool2d_bwd")(_fake_avg_bwd)
torch.library.register_fake("minitorch_ext::adaptive_avg_pool2d_fwd")(_fake_adaptive_fwd)
torch.library.register_fake("minitorch_ext::adaptive_avg_pool2d_bwd")(_fake_adaptive_bwd)


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Triton ops: minitorch_ext.kernels.pool behind the same schemas
# ---------------------------------------------------------------------------

@triton_custom_op("minitorch_ext::max_pool2d_fwd_triton", mutates_args=(), fake=_fake_max_fwd)
def _max_fwd_triton(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                    dilation: List[int], ceil_mode: bool) -> Tuple[Tensor, Tensor]:
    from minitorch_ext.kernels import pool as K

    return K.max_pool2d_fwd(input, kernel_size, stride, padding, dilation, ceil_mode)


@triton_custom_op("minitorch_ext::max_pool2d_bwd_triton", mutates_args=(), fake=_fake_max_bwd)
def _max_bwd_triton(grad_output: Tensor, input: Tensor, indices: Tensor) -> Tensor:
    from minitorch_ext.kernels import pool as K

    return K.max_pool2d_bwd(grad_output, input, indices)


@triton_custom_op("minitorch_ext::avg_pool2d_fwd_triton", mutates_args=(), fake=_fake_avg_fwd)
def _avg_fwd_triton(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], ceil_mode: bool,
                    count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    from minitorch_ext.kernels import pool as K

    return K.avg_pool2d_fwd(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


@triton_custom_op("minitorch_ext::avg_pool2d_bwd_triton", mutates_args=(), fake=_fake_avg_bwd)
def _avg_bwd_triton(grad_output: Tensor, input: Tensor, kernel_size: List[int], stride: List[int],
                    padding: List[int], ceil_mode: bool, count_include_pad: bool,
                    divisor_override: Optional[int]) -> Tensor:
    from minitorch_ext.kernels import pool as K

    return K.avg_pool2d_bwd(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override)


@triton_custom_op("minitorch_ext::adaptive_avg_pool2d_fwd_triton", mutates_args=(), fake=_fake_adaptive_fwd)
def _adaptive_fwd_triton(input: Tensor, output_size: List[int]) -> Tensor:
    from minitorch_ext.kernels import pool as K

    return K.adaptive_avg_pool2d_fwd(input, output_size)


@triton_custom_op("minitorch_ext::adaptive_avg_pool2d_bwd_triton", mutates_args=(), fake=_fake_adaptive_bwd)
def _adaptive_bwd_triton(grad_output: Tensor, input: Tensor) -> Tensor:
    from minitorch_ext.kernels import pool as K

    return K.adaptive_avg_pool2d_bwd(grad_output, input)


# ---------------------------------------------------------------------------
# autograd: one wiring per forward op, the backward op of the same backend
# ---------------------------------------------------------------------------

def _max_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1])
    ctx.mark_non_differentiable(output[1])


def _avg_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.args = inputs[1:]


def _adaptive_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _wire(sfx: str) -> None:
    def max_backward(ctx, grad_out, grad_indices):
        input, indices = ctx.saved_tensors
        return getattr(_OPS, "max_pool2d_bwd" + sfx)(grad_out, input, indices), None, None, None, None, None

    def avg_backward(ctx, grad_out):
        (input,) = ctx.saved_tensors
        return (getattr(_OPS, "avg_pool2d_bwd" + sfx)(grad_out, input, *ctx.args),) + (None,) * 6

    def adaptive_backward(ctx, grad_out):
        (input,) = ctx.saved_tensors
        return getattr(_OPS, "adaptive_avg_pool2d_bwd" + sfx)(grad_out, input), None

    torch.library.register_autograd("minitorch_ext::max_pool2d_fwd" + sfx, max_backward, setup_context=_max_setup)
    torch.library.register_autograd("minitorch_ext::avg_pool2d_fwd" + sfx, avg_backward, setup_context=_avg_setup)
    torch.library.register_autograd("minitorch_ext::adaptive_avg_pool2d_fwd" + sfx, adaptive_backward,
                                    setup_context=_adaptive_setup)


_wire("")
_wire("_triton")


# ---------------------------------------------------------------------------
# argument checks: torch's error types and messages
# ---------------------------------------------------------------------------

def _check_tensor(fn: str, input) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}")


def _check_backend(fn: str, input: Tensor) -> str:
    """The op-name suffix of the backend that runs `input`: "_triton" or "" (the C++ ops)."""
    if input.device.type == "meta":
        return ""
    if _backend.resolve(input.device) == "triton":
        return "_triton"
    if input.device.type != "cpu" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "minitorch_ext::max_pool2d_fwd", input.device.type.upper()):
        raise NotImplementedError(f"minitorch_ext.nn.functional.{fn}: this build has no {input.device.type} "
                                  f"pooling kernel for the 'cpp' backend; use_backend('triton') for "
                                  f"{input.device.type} tensors")
    return ""


def _check_dtype(kernel: str, input: Tensor) -> None:
    if input.dtype not in _FLOATS and not (input.dtype == torch.float16 and input.device.type == "cuda"):
        name = _SCALAR_NAMES.get(input.dtype, str(input.dtype).replace("torch.", ""))
        raise NotImplementedError(f'"{kernel}" not implemented for \'{name}\' (minitorch_ext pools float32, '
                                  f'float64 and bfloat16; float16 on CUDA)')


def _pair(fn: str, what: str, v, n: int = 2, allow_empty: bool = False) -> List[int]:
    if isinstance(v, numbers.Integral):
        return [int(v)] * n
    v = list(v)
    if allow_empty and len(v) == 0:
        return []
    if len(v) == 1:
        return [int(v[0])] * n
    if len(v) == n:
        return [int(e) for e in v]
    if what == "kernel_size":
        raise RuntimeError(f"{fn}: kernel_size must either be a single int, or a tuple of two ints")
    if what == "stride":
        raise RuntimeError(f"{fn}: stride must either be omitted, a single int, or a tuple of two ints")
    if what == "padding":
        raise RuntimeError(f"{fn}: padding must either be a single int, or a tuple of two ints")
    raise RuntimeError(f"{fn}: dilation must be either a single int, or a tuple of two ints")


def _check_window(k, s, p, d, sizes, C, ceil_mode, effective: bool = True):
    """torch's pooling_output_shape and pool2d_shape_check, in its order; returns (Ho, Wo)."""
    for i in range(len(k)):
        if s[i] == 0:
            raise RuntimeError("stride should not be zero")
        if p[i] < 0:
            raise RuntimeError(f"pad must be non-negative, but got pad: {p[i]}")
        if p[i] > ((k[i] - 1) * d[i] + 1) // 2:
            raise RuntimeError(f"pad should be at most half of effective kernel size, but got pad={p[i]}, "
                               f"kernel_size={k[i]} and dilation={d[i]}")
    if min(k) <= 0:
        raise RuntimeError(f"kernel size should be greater than zero, but got kH: {k[0]} kW: {k[-1]}")
    if min(s) <= 0:
        raise RuntimeError(f"stride should be greater than zero, but got dH: {s[0]} dW: {s[-1]}")
    if min(d) <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got dilationH: {d[0]} dilationW: {d[-1]}")
    out = [pool_out_size(sizes[i], k[i], p[i], s[i], d[i], ceil_mode) for i in range(len(k))]
    if min(out) < 1:
        raise RuntimeError(f"Given input size: ({C}x{sizes[0]}x{sizes[1]}). Calculated output size: "
                           f"({C}x{out[0]}x{out[1]}). Output size is too small")
    return out


def _as4d(fn: str, input: Tensor, one_d: bool):
    """input as [N, C, H, W] (1-D: H = 1; unbatched: N = 1) and a function undoing it."""
    nd = input.dim()
    lo, hi = (2, 3) if one_d else (3, 4)
    if nd not in (lo, hi) or any(s == 0 for s in input.shape[nd - lo:]):
        prefix = f"{fn}: " if one_d else ""
        raise RuntimeError(f"{prefix}Expected {lo}D or {hi}D (batch mode) tensor with optional 0 dim batch size "
                           f"for input, but got:{list(input.shape)}")
    x = input if nd == hi else input.unsqueeze(0)
    if one_d:
        x = x.unsqueeze(-2)

    def undo(y: Tensor) -> Tensor:
        if one_d:
            y = y.squeeze(-2)
        return y if nd == hi else y.squeeze(0)

    return x, undo


# ---------------------------------------------------------------------------
# public entry points (torch.nn.functional signatures)
# ---------------------------------------------------------------------------

_IntOr = Union[int, Sequence[int]]


def _max_pool(fn, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, one_d):
    _check_tensor(fn, input)
    sfx = _check_backend(fn, input)
    n = 1 if one_d else 2
    k = _pair(fn, "kernel_size", kernel_size, n)
    s = _pair(fn, "stride", stride, n, allow_empty=True) if stride is not None else []
    s = s or list(k)
    p = _pair(fn, "padding", padding, n)
    d = _pair(fn, "dilation", dilation, n)
    if one_d:
        if k[0] <= 0:
            raise RuntimeError(f"{fn}() kernel_size must be greater than zero, but got {k[0]}")
        if s[0] <= 0:
            raise RuntimeError(f"{fn}() stride must be greater than zero, but got {s[0]}")
        if p[0] < 0:
            raise RuntimeError(f"{fn}() padding must be non-negative, but got {p[0]}")
        if p[0] > k[0] // 2:
            raise RuntimeError(f"{fn}() padding should be at most half of kernel size, but got padding={p[0]} "
                               f"and kernel_size={k[0]}")
        if d[0] <= 0:
            raise RuntimeError(f"{fn}() dilation must be greater than zero, but got {d[0]}")
    if input.dim() not in ((2, 3) if one_d else (3, 4)):
        if one_d:
            raise RuntimeError(f"{fn}: Expected 2D or 3D (batch mode) tensor with optional 0 dim batch size for "
                               f"input, but got:{list(input.shape)}")
        raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
    x, undo = _as4d(fn, input, one_d)
    _check_dtype("max_pool2d", input)
    if one_d:
        k, s, p, d = [1] + k, [1] + s, [0] + p, [1] + d
        out = pool_out_size(x.shape[-1], k[1], p[1], s[1], d[1], ceil_mode)
        if out < 1:
            raise RuntimeError(f"{fn}() Invalid computed output size: {out}")
    _check_window(k, s, p, d, x.shape[-2:], x.shape[1], ceil_mode)
    y, ind = getattr(_OPS, "max_pool2d_fwd" + sfx)(x, k, s, p, d, bool(ceil_mode))
    y, ind = undo(y), undo(ind)
    return (y, ind) if return_indices else y


def max_pool2d(input: Tensor, kernel_size: _IntOr, stride: Optional[_IntOr] = None, padding: _IntOr = 0,
               dilation: _IntOr = 1, ceil_mode: bool = False, return_indices: bool = False):
    """Same as torch.nn.functional.max_pool2d (indices as torch's: flat h*W+w per plane), on our kernels."""
    return _max_pool("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, False)


def max_pool1d(input: Tensor, kernel_size: _IntOr, stride: Optional[_IntOr] = None, padding: _IntOr = 0,
               dilation: _IntOr = 1, ceil_mode: bool = False, return_indices: bool = False):
    """Same as torch.nn.functional.max_pool1d, on our kernels (a 2-D pool with H = 1)."""
    return _max_pool("max_pool1d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, True)


def _avg_pool(fn, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, one_d):
    _check_tensor(fn, input)
    sfx = _check_backend(fn, input)
    n = 1 if one_d else 2
    k = _pair(fn, "kernel_size", kernel_size, n)
    s = _pair(fn, "stride", stride, n, allow_empty=True) if stride is not None else []
    s = s or list(k)
    p = _pair(fn, "padding", padding, n)
    if one_d and input.dim() not in (2, 3):
        raise RuntimeError(f"Expected 2 to 3 dimensions, but got {input.dim()}-dimensional tensor for argument #1 "
                           f"'self' (while checking arguments for {fn})")
    if not one_d and input.dim() < 3:  # torch indexes dim -3 first
        n = max(input.dim(), 1)
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got -3)")
    if not one_d and input.dim() not in (3, 4):
        raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    x, undo = _as4d(fn, input, one_d)
    _check_dtype("avg_pool2d", input)
    if one_d:
        k, s, p = [1] + k, [1] + s, [0] + p
    _check_window(k, s, p, [1, 1], x.shape[-2:], x.shape[1], ceil_mode)
    div = None if divisor_override is None else int(divisor_override)
    return undo(getattr(_OPS, "avg_pool2d_fwd" + sfx)(x, k, s, p, bool(ceil_mode), bool(count_include_pad), div))


def avg_pool2d(input: Tensor, kernel_size: _IntOr, stride: Optional[_IntOr] = None, padding: _IntOr = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: Optional[int] = None) -> Tensor:
    """Same as torch.nn.functional.avg_pool2d, on our kernels."""
    return _avg_pool("avg_pool2d", input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, False)


def avg_pool1d(input: Tensor, kernel_size: _IntOr, stride: Optional[_IntOr] = None, padding: _IntOr = 0,
               ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    """Same as torch.nn.functional.avg_pool1d, on our kernels (a 2-D pool with H = 1)."""
    return _avg_pool("avg_pool1d", input, kernel_size, stride, padding, ceil_mode, count_include_pad, None, True)


def _adaptive(fn, input, output_size, one_d):
    _check_tensor(fn, input)
    sfx = _check_backend(fn, input)
    nd = input.dim()
    if one_d:
        if nd not in (2, 3):
            raise RuntimeError(f"Expected 2 to 3 dimensions, but got {nd}-dimensional tensor for argument #1 "
                               f"'self' (while checking arguments for {fn})")
        os_ = _pair(fn, "output_size", output_size, 1)
        if len(os_) != 1:
            raise RuntimeError(f"{fn}: output_size must be 1")
        os_ = [1] + os_
    else:
        if nd not in (3, 4):
            raise RuntimeError(f"{fn}(): Expected 3D or 4D tensor, but got {list(input.shape)}")
        if isinstance(output_size, numbers.Integral) or output_size is None:
            os_ = [output_size, output_size]
        else:
            os_ = list(output_size)
        if len(os_) != 2:
            raise RuntimeError(f"{fn}: output_size must be 2")
        os_ = [input.shape[-2 + i] if v is None else int(v) for i, v in enumerate(os_)]
    if min(os_) < 0:
        raise RuntimeError(f"{fn}: elements of output_size must be greater than or equal to 0 but received "
                           f"{{{os_[0]}, {os_[1]}}}")
    nb = nd - (2 if one_d else 3)  # 1 when batched
    if any(s == 0 for s in input.shape[nb:]):
        raise RuntimeError(f"{fn}(): Expected input to have non-zero size for non-batch dimensions, but input has "
                           f"sizes {list(input.shape)} with dimension {nb + [s == 0 for s in input.shape[nb:]].index(True)} "
                           f"being empty")
    _check_dtype("adaptive_avg_pool2d", input)
    x = input if nb == 1 else input.unsqueeze(0)
    if one_d:
        x = x.unsqueeze(-2)
    y = getattr(_OPS, "adaptive_avg_pool2d_fwd" + sfx)(x, os_)
    if one_d:
        y = y.squeeze(-2)
    return y if nb == 1 else y.squeeze(0)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Same as torch.nn.functional.adaptive_avg_pool2d (None entries keep the input size), on our kernels."""
    return _adaptive("adaptive_avg_pool2d", input, output_size, False)


def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    """Same as torch.nn.functional.adaptive_avg_pool1d, on our kernels (H = 1)."""
    return _adaptive("adaptive_avg_pool1d", input, output_size, True)


__all__ = ["max_pool2d", "max_pool1d", "avg_pool2d", "avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool1d",
           "pool_out_size"]
