"""Dropout family, Python side: fake kernels, autograd, torch's argument semantics, the functionals.

Registered ops (schemas in csrc/ops.cpp, C++ kernels in csrc/dropout/dropout_cpu.cpp):

    torch.ops.minitorch_ext.dropout_fwd / dropout_fwd_ / dropout_bwd              C++ (CPU, CUDA)
    torch.ops.minitorch_ext.dropout_fwd_triton / dropout_bwd_triton               Triton (kernels/dropout.py)

The mask. Element (channel) c is kept iff word c % 4 of Philox4x32-10 at counter c // 4,
key = seed, is >= floor(p * 2**32) (minitorch_ext._philox is the NumPy reference; the
attention family draws its dropout the same way). c is the linear (row-major) index of
the element for ``dropout``, the (n, c) channel index for ``dropout1d``/``dropout2d``
(torch's feature dropout: the mask broadcast over the spatial dims). Kept elements are
scaled by 1/(1-p); a dropped one is multiplied by 0 (NaN stays NaN, as in torch).
The mask is ours by design: it is not torch's bernoulli stream, so tests check it
against the NumPy reference and by its statistics, not against torch's values.

The seed: one int64 per call drawn from torch's default CPU generator (as attention's
``draw_seed``; here kept as a 0-d CPU tensor, so torch.compile(fullgraph=True) traces a
training-mode dropout without a graph break), so ``torch.manual_seed`` makes eager runs
repeatable (a compiled graph draws through inductor's own generator, seeded from torch's). p == 0, training=False
or an empty input draw nothing and return the input itself, as torch does. Backward
regenerates the mask from (seed, index): nothing but the seed is saved.

inplace=True writes into the input (an autograd.Function that marks it dirty: a leaf
that requires grad is refused with torch's message, a non-leaf gets the masked gradient).
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .. import _backend
from ._registry import triton_custom_op

_OPS = torch.ops.minitorch_ext
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------------------
# fake (meta) kernels
# ---------------------------------------------------------------------------

def _fake_fwd(input, p, seed, channel_size):
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)


def _fake_fwd_(input, p, seed, channel_size):
    return None


def _fake_bwd(grad_output, p, seed, channel_size):
    return torch.empty(grad_output.shape, dtype=grad_output.dtype, device=grad_output.device)


torch.library.register_fake("minitorch_ext::dropout_fwd")(_fake_fwd)
torch.library.register_fake("minitorch_ext::dropout_fwd_")(_fake_fwd_)
torch.library.register_fake("minitorch_ext::dropout_bwd")(_fake_bwd)


# ---------------------------------------------------------------------------
# Triton ops: minitorch_ext.kernels.dropout behind the same schemas
# ---------------------------------------------------------------------------

@triton_custom_op("minitorch_ext::dropout_fwd_triton", mutates_args=(), fake=_fake_fwd)
def _fwd_triton(input: Tensor, p: float, seed: Tensor, channel_size: int) -> Tensor:
    from minitorch_ext.kernels import dropout as K

    return K.dropout_map(input, p, int(seed), channel_size)


@triton_custom_op("minitorch_ext::dropout_bwd_triton", mutates_args=(), fake=_fake_bwd)
def _bwd_triton(grad_output: Tensor, p: float, seed: Tensor, channel_size: int) -> Tensor:
    from minitorch_ext.kernels import dropout as K

    return K.dropout_map(grad_output, p, int(seed), channel_size)


# ---------------------------------------------------------------------------
# autograd: backward is the same map on grad_output, from the saved seed
# ---------------------------------------------------------------------------

def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])
    ctx.p, ctx.channel_size = inputs[1], inputs[3]


def _wire(sfx: str) -> None:
    def backward(ctx, grad_out):
        (seed,) = ctx.saved_tensors
        return getattr(_OPS, "dropout_bwd" + sfx)(grad_out, ctx.p, seed, ctx.channel_size), None, None, None

    torch.library.register_autograd("minitorch_ext::dropout_fwd" + sfx, backward, setup_context=_setup)


_wire("")
_wire("_triton")


class _DropoutInplace(torch.autograd.Function):
    """In-place dropout with autograd: the input is overwritten and marked dirty."""

    @staticmethod
    def forward(ctx, input, p, seed, channel_size, sfx):
        _inplace_kernel(input, p, seed, channel_size, sfx)
        ctx.mark_dirty(input)
        ctx.save_for_backward(seed)
        ctx.p, ctx.channel_size, ctx.sfx = p, channel_size, sfx
        return input

    @staticmethod
    def backward(ctx, grad_out):
        (seed,) = ctx.saved_tensors
        return (getattr(_OPS, "dropout_bwd" + ctx.sfx)(grad_out, ctx.p, seed, ctx.channel_size),
                None, None, None, None)


def _inplace_kernel(input: Tensor, p: float, seed: Tensor, channel_size: int, sfx: str) -> None:
    if sfx:
        input.copy_(_OPS.dropout_fwd_triton(input, p, seed, channel_size))
    else:
        _OPS.dropout_fwd_(input, p, seed, channel_size)


# ---------------------------------------------------------------------------
# argument checks and the shared path
# ---------------------------------------------------------------------------

def draw_seed() -> Tensor:
    """One draw from torch's default CPU generator: the seed of one dropout call, a 0-d int64
    CPU tensor (the CPU generator serves CUDA tensors too: a CUDA draw would need a device
    sync per call). A tensor, not an int: torch.compile traces the draw (no .item(), no graph
    break); the kernels read its value on the host."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)


def _check_p(p) -> float:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return float(p)


def _check_backend(fn: str, input: Tensor) -> str:
    """The op-name suffix of the backend that runs `input`: "_triton" or "" (the C++ ops)."""
    if input.device.type == "meta":
        return ""
    if _backend.resolve(input.device) == "triton":
        return "_triton"
    if input.device.type != "cpu" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "minitorch_ext::dropout_fwd", input.device.type.upper()):
        raise NotImplementedError(f"minitorch_ext.nn.functional.{fn}: this build has no {input.device.type} "
                                  f"dropout kernel for the 'cpp' backend; use_backend('triton') for "
                                  f"{input.device.type} tensors")
    return ""


def _run(fn: str, input: Tensor, p: float, training: bool, inplace: bool, channel_size: int) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}")
    if not training or p == 0.0 or input.numel() == 0:
        return input  # torch returns the input itself: nothing is drawn
    if input.dtype not in _FLOATS:
        raise RuntimeError(f"result type Float can't be cast to the desired output type "
                           f"{str(input.dtype).replace('torch.', '').capitalize()} ({fn}: minitorch_ext drops "
                           f"float32, float64, bfloat16 and float16)")
    sfx = _check_backend(fn, input)
    seed = draw_seed()
    if inplace:
        if torch.is_grad_enabled() and input.requires_grad:
            if input.is_leaf:  # torch's message (autograd.Function's own says "has been used")
                raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
            return _DropoutInplace.apply(input, p, seed, channel_size, sfx)
        _inplace_kernel(input, p, seed, channel_size, sfx)
        return input
    return getattr(_OPS, "dropout_fwd" + sfx)(input, p, seed, channel_size)


# ---------------------------------------------------------------------------
# public entry points (torch.nn.functional signatures)
# ---------------------------------------------------------------------------

def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Same contract as torch.nn.functional.dropout (the mask is Philox's, see the module doc)."""
    p = _check_p(p)
    return _run("dropout", input, p, training, inplace, 1)


def _feature(fn: str, input: Tensor, p: float, training: bool, inplace: bool) -> Tensor:
    # torch's feature dropout: dims 0, 1 are (N, C), the rest one channel; a channel is the product
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    cs = math.prod(input.shape[2:]) if input.dim() > 2 else 1
    return _run(fn, input, p, training, inplace, max(cs, 1))


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Same as torch.nn.functional.dropout1d: whole channels of (N, C, L) or (C, L) inputs."""
    p = _check_p(p)
    nd = input.dim()
    if nd not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {nd}D input. "
            "Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
            "spatial dimension, a channel dimension, and an optional batch dimension "
            "(i.e. 2D or 3D inputs).")
    batched = nd == 3
    if not batched:
        input = input.unsqueeze_(0) if inplace else input.unsqueeze(0)
    out = _feature("dropout1d", input, p, training, inplace)
    if not batched:
        out = out.squeeze_(0) if inplace else out.squeeze(0)
    return out


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Same as torch.nn.functional.dropout2d, warnings included (a 3-D input is (N, C, L), as torch)."""
    p = _check_p(p)
    nd = input.dim()
    if nd not in (3, 4):
        warnings.warn(
            f"dropout2d: Received a {nd}-D input to dropout2d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            "and silence this warning, please use dropout instead. Note that dropout2d "
            "exists to provide channel-wise dropout on inputs with 2 spatial dimensions, "
            "a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs).", stacklevel=2)
    if nd == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
            "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
            "is the channel dim. This behavior will change in a future release to interpret the "
            "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
            "channel-wise dropout behavior, please switch to using dropout1d instead.", stacklevel=2)
    return _feature("dropout2d", input, p, training, inplace)


__all__ = ["dropout", "dropout1d", "dropout2d", "draw_seed"]
