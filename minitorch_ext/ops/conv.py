"""Conv family, Python side: conv1d / conv2d on the C++ implicit-GEMM kernels.

Registered ops (schemas in csrc/ops.cpp, CPU kernels in csrc/conv/conv_cpu.cpp):

    torch.ops.minitorch_ext.conv_fwd / conv_bwd                  C++ (CPU)
    torch.ops.minitorch_ext.conv_fwd_triton / conv_bwd_triton    Triton (kernels/conv.py), same schemas

The functionals pick the op by the active backend (minitorch_ext._backend.resolve).

The kernels see 4-D [N, C, H, W] tensors only; this module maps torch's
arguments onto them: 1-D convs are H == 1, unbatched inputs get N == 1,
``padding='valid'|'same'`` become explicit [top, bottom, left, right] pads
('same': (dilation*(k-1))//2 before, the rest after, as torch), and the
modules' padding_mode travels to the kernel (no F.pad). Errors are torch's
types with torch's messages (sizes named).

`conv_fwd` gets `register_autograd` (backward: `conv_bwd`), fake kernels (for
opcheck and torch.compile) and torch's autocast policy for convolutions
("lower" on cpu and cuda).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from .. import _backend
from ._registry import register_autocast_policy, triton_custom_op

_OPS = torch.ops.minitorch_ext
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# ---------------------------------------------------------------------------
# fake (meta) kernels
# ---------------------------------------------------------------------------

def _pads4(padding: Sequence[int]) -> List[int]:
    padding = list(padding)
    return [padding[0], padding[0], padding[1], padding[1]] if len(padding) == 2 else padding


def _use_cl(input: Tensor, weight: Tensor) -> bool:
    return (input.dim() == 4 and suggest_memory_format(input) == torch.channels_last) or \
        (weight.dim() == 4 and suggest_memory_format(weight) == torch.channels_last)


def _out_hw(input, weight, stride, padding, dilation):
    pt, pb, pl, pr = _pads4(padding)
    ho = (input.shape[2] + pt + pb - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    wo = (input.shape[3] + pl + pr - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
    return ho, wo


def _fake_conv_fwd(input, weight, bias, stride, padding, dilation, groups, padding_mode, act):
    ho, wo = _out_hw(input, weight, stride, padding, dilation)
    fmt = torch.channels_last if _use_cl(input, weight) else torch.contiguous_format
    return input.new_empty((input.shape[0], weight.shape[0], ho, wo)).contiguous(memory_format=fmt)


def _fake_conv_bwd(grad_output, input, weight, stride, padding, dilation, groups, padding_mode, output_mask):
    fmt = torch.channels_last if _use_cl(input, weight) else torch.contiguous_format
    gi = input.new_empty(input.shape).contiguous(memory_format=fmt) if output_mask[0] else input.new_empty((0,))
    gw = weight.new_empty(weight.shape) if output_mask[1] else input.new_empty((0,))
    gb = weight.new_empty((weight.shape[0],)) if output_mask[2] else input.new_empty((0,))
    return gi, gw, gb


torch.library.register_fake("minitorch_ext::conv_fwd")(_fake_conv_fwd)
torch.library.register_fake("minitorch_ext::conv_bwd")(_fake_conv_bwd)


# ---------------------------------------------------------------------------
# Triton ops: minitorch_ext.kernels.conv behind the same schemas
# ---------------------------------------------------------------------------

@triton_custom_op("minitorch_ext::conv_fwd_triton", mutates_args=(), fake=_fake_conv_fwd)
def _conv_fwd_triton(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                     dilation: List[int], groups: int, padding_mode: str, act: str) -> Tensor:
    from minitorch_ext.kernels import conv as K

    return K.conv_fwd(input, weight, bias, list(stride), list(padding), list(dilation), groups, padding_mode, act)


@triton_custom_op("minitorch_ext::conv_bwd_triton", mutates_args=(), fake=_fake_conv_bwd)
def _conv_bwd_triton(grad_output: Tensor, input: Tensor, weight: Tensor, stride: List[int], padding: List[int],
                     dilation: List[int], groups: int, padding_mode: str,
                     output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import conv as K

    mask = [bool(m) for m in output_mask]
    res = K.conv_bwd(grad_output, input, weight, list(stride), list(padding), list(dilation), groups,
                     padding_mode, mask)
    gi, gw, gb = (t if m else input.new_empty((0,)) for t, m in zip(res, mask))
    return gi, gw, gb


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, padding_mode, act = inputs
    ctx.save_for_backward(input, weight)
    ctx.conf = (list(stride), list(padding), list(dilation), groups, padding_mode)
    ctx.has_bias = bias is not None
    ctx.act = act


def _make_backward(bwd):
    def _backward(ctx, grad_out):
        if ctx.act != "none":
            raise RuntimeError(f"conv_fwd: backward through the fused activation {ctx.act!r} is not supported "
                               f"(use act='none' and apply the activation separately for training)")
        input, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [bool(need[0]), bool(need[1]), bool(need[2]) and ctx.has_bias]
        stride, padding, dilation, groups, padding_mode = ctx.conf
        gi, gw, gb = bwd()(grad_out, input, weight, stride, padding, dilation, groups, padding_mode, mask)
        return (gi if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
                None, None, None, None, None, None)

    return _backward


_backward = _make_backward(lambda: _OPS.conv_bwd)
torch.library.register_autograd("minitorch_ext::conv_fwd", _backward, setup_context=_setup_context)
torch.library.register_autograd("minitorch_ext::conv_fwd_triton", _make_backward(lambda: _OPS.conv_bwd_triton),
                                setup_context=_setup_context)
# torch's autocast runs convolutions in the lower precision on both devices
register_autocast_policy("minitorch_ext::conv_fwd", cpu="lower", cuda="lower")
register_autocast_policy("minitorch_ext::conv_fwd_triton", cpu="lower", cuda="lower")


def _fwd_op(device):
    return _OPS.conv_fwd_triton if _backend.resolve(device) == "triton" else _OPS.conv_fwd


# ---------------------------------------------------------------------------
# argument handling, torch's semantics and messages
# ---------------------------------------------------------------------------

def _tuple(v, n: int, name: str) -> List[int]:
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    if len(v) == 1 and n > 1:
        return v * n
    if len(v) != n:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of {n} values to match the "
                           f"convolution dimensions, but got {name}={v}")
    return [int(e) for e in v]


def _same_pads(weight: Tensor, dilation: List[int], nd: int) -> List[Tuple[int, int]]:
    pads = []
    for d in range(nd):
        total = dilation[d] * (weight.shape[2 + d] - 1)
        pads.append((total // 2, total - total // 2))
    return pads


def _conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups: int,
          nd: int, padding_mode: str = "zeros", act: str = "none") -> Tensor:
    """The shared body of conv1d / conv2d (nd = 1 or 2). `padding` may also be a list of
    (before, after) pairs per spatial dim (asymmetric: 'same', module padding modes)."""
    name = f"conv{nd}d"
    for argname, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}() argument '{argname}' must be Tensor, not {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"{name}() argument 'bias' must be Tensor or None, not {type(bias).__name__}")
    if input.dim() not in (nd + 1, nd + 2):
        raise RuntimeError(f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to {name}, but got "
                           f"input of size: {list(input.shape)}")
    if weight.dim() != nd + 2:
        raise RuntimeError(f"weight should have {nd + 2} dimensions for {name} ([out_channels, in_channels/"
                           f"groups, {'kL' if nd == 1 else 'kH, kW'}]), but got weight of size "
                           f"{list(weight.shape)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {list(PADDING_MODES)}, but got padding_mode="
                         f"'{padding_mode}'")
    stride = _tuple(stride, nd, "stride")
    dilation = _tuple(dilation, nd, "dilation")
    if not isinstance(groups, int) or groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(f"dilation should be greater than zero, but got {dilation}")
    if isinstance(padding, str):
        if padding == "valid":
            pairs = [(0, 0)] * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise RuntimeError("padding='same' is not supported for strided convolutions")
            pairs = _same_pads(weight, dilation, nd)
        else:
            raise RuntimeError(f"Invalid padding string: '{padding}'")
    elif isinstance(padding, (list, tuple)) and padding and isinstance(padding[0], (list, tuple)):
        pairs = [tuple(int(v) for v in p) for p in padding]
    else:
        pairs = [(p, p) for p in _tuple(padding, nd, "padding")]
    if any(v < 0 for p in pairs for v in p):
        raise RuntimeError("negative padding is not supported")
    for argname, t in (("input", input), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise RuntimeError(f"{name}(): {argname}: expected a floating point tensor, got dtype {t.dtype}")
    if weight.dtype != input.dtype:
        raise RuntimeError(f"Input type ({_c10(input.dtype)}) and weight type ({_c10(weight.dtype)}) should be "
                           f"the same")
    if bias is not None and bias.dtype != input.dtype:
        raise RuntimeError(f"Input type ({_c10(input.dtype)}) and bias type ({_c10(bias.dtype)}) should be "
                           f"the same")
    for argname, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise RuntimeError(f"Expected all tensors to be on the same device, but {argname} is on {t.device} "
                               f"and input on {input.device}")
    unbatched = input.dim() == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    cin = x.shape[1]
    if weight.shape[0] % groups != 0:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                           f"but got weight of size {list(weight.shape)} instead")
    if cin != weight.shape[1] * groups:
        raise RuntimeError(f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                           f"{list(x.shape)} to have {weight.shape[1] * groups} channels, but got {cin} channels "
                           f"instead")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise RuntimeError(f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
                           f"{weight.shape[0]} elements, but got bias of size {list(bias.shape)} instead")
    spatial = list(x.shape[2:])
    padded = [spatial[d] + pairs[d][0] + pairs[d][1] for d in range(nd)]
    ks = [dilation[d] * (weight.shape[2 + d] - 1) + 1 for d in range(nd)]
    if any(p < k for p, k in zip(padded, ks)):
        raise RuntimeError(f"Calculated padded input size per channel: ({' x '.join(map(str, padded))}). "
                           f"Kernel size: ({' x '.join(map(str, ks))}). Kernel size can't be greater than actual "
                           f"input size")
    if padding_mode == "reflect":
        for d in range(nd):
            if max(pairs[d]) >= spatial[d]:
                raise RuntimeError(f"Padding size should be less than the corresponding input dimension, but got: "
                                   f"padding {pairs[d]} at dimension {d + 2} of input {list(x.shape)}")
    if padding_mode == "circular":
        for d in range(nd):
            if max(pairs[d]) > spatial[d]:
                raise RuntimeError("Padding value causes wrapping around more than once.")
    if nd == 1:
        x4, w4 = x.unsqueeze(2), weight.unsqueeze(2)
        st, dl = [1, stride[0]], [1, dilation[0]]
        pads = [0, 0, pairs[0][0], pairs[0][1]]
    else:
        x4, w4, st, dl = x, weight, stride, dilation
        pads = [pairs[0][0], pairs[0][1], pairs[1][0], pairs[1][1]]
    out = _fwd_op(x4.device)(x4, w4, bias, st, pads, dl, groups, padding_mode, act)
    if nd == 1:
        out = out.squeeze(2)
    if unbatched:
        out = out.squeeze(0)
    return out


def _c10(dtype: torch.dtype) -> str:
    return {torch.float32: "float", torch.float64: "double", torch.bfloat16: "c10::BFloat16",
            torch.float16: "c10::Half"}.get(dtype, str(dtype).replace("torch.", ""))


# ---------------------------------------------------------------------------
# public entry points (torch.nn.functional's signatures)
# ---------------------------------------------------------------------------

def conv1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1,
           padding: Union[str, int, Sequence[int]] = 0, dilation=1, groups: int = 1) -> Tensor:
    """Same as torch.nn.functional.conv1d, on our implicit-GEMM kernels."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1,
           padding: Union[str, int, Sequence[int]] = 0, dilation=1, groups: int = 1) -> Tensor:
    """Same as torch.nn.functional.conv2d, on our implicit-GEMM kernels."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2)
