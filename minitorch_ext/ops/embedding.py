"""Embedding family, Python side: fake kernels, autograd, torch's argument semantics, the functional.

Registered ops (schemas in csrc/ops.cpp, C++ kernels in csrc/embedding/embedding_cpu.cpp):

    torch.ops.minitorch_ext.embedding_fwd / embedding_bwd / embedding_renorm_     C++ (CPU, CUDA)
    torch.ops.minitorch_ext.embedding_fwd_triton / embedding_bwd_triton          Triton (kernels/embedding.py)

Forward gathers rows; backward is a deterministic scatter-add (the indices sorted by
row, each row summed in index order by the one thread (program) that owns it: no
atomics, bitwise repeatable); padding_idx rows get no gradient; scale_grad_by_freq
divides each contribution by its index's count, as torch. max_norm renormalises the
referenced rows of weight in place before the gather, under no_grad, as torch's
embedding_renorm_ (always the C++ op: it is a small, rare pass). sparse=True is refused
(NotImplementedError naming it): the gradient is always dense.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _backend
from ._registry import triton_custom_op

_OPS = torch.ops.minitorch_ext


# ---------------------------------------------------------------------------
# fake (meta) kernels
# ---------------------------------------------------------------------------

def _fake_fwd(weight, indices, padding_idx, scale_grad_by_freq):
    return torch.empty((*indices.shape, weight.shape[1]), dtype=weight.dtype, device=weight.device)


def _fake_bwd(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
    return torch.empty((num_weights, grad_output.shape[-1]), dtype=grad_output.dtype, device=grad_output.device)


def _fake_renorm(weight, indices, max_norm, norm_type):
    return None


torch.library.register_fake("minitorch_ext::embedding_fwd")(_fake_fwd)
torch.library.register_fake("minitorch_ext::embedding_bwd")(_fake_bwd)
torch.library.register_fake("minitorch_ext::embedding_renorm_")(_fake_renorm)


# ---------------------------------------------------------------------------
# Triton ops
# ---------------------------------------------------------------------------

@triton_custom_op("minitorch_ext::embedding_fwd_triton", mutates_args=(), fake=_fake_fwd)
def _fwd_triton(weight: Tensor, indices: Tensor, padding_idx: int, scale_grad_by_freq: bool) -> Tensor:
    from minitorch_ext.kernels import embedding as K

    return K.embedding_fwd(weight, indices)


@triton_custom_op("minitorch_ext::embedding_bwd_triton", mutates_args=(), fake=_fake_bwd)
def _bwd_triton(grad_output: Tensor, indices: Tensor, num_weights: int, padding_idx: int,
                scale_grad_by_freq: bool) -> Tensor:
    from minitorch_ext.kernels import embedding as K

    return K.embedding_bwd(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq)


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------

def _setup(ctx, inputs, output):
    weight, indices, padding_idx, sgbf = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights, ctx.padding_idx, ctx.sgbf = weight.shape[0], padding_idx, sgbf


def _wire(sfx: str) -> None:
    def backward(ctx, grad_out):
        (indices,) = ctx.saved_tensors
        gw = getattr(_OPS, "embedding_bwd" + sfx)(grad_out, indices, ctx.num_weights, ctx.padding_idx, ctx.sgbf)
        return gw, None, None, None

    torch.library.register_autograd("minitorch_ext::embedding_fwd" + sfx, backward, setup_context=_setup)


_wire("")
_wire("_triton")


# ---------------------------------------------------------------------------
# the functional
# ---------------------------------------------------------------------------

def _check_backend(input: Tensor) -> str:
    if input.device.type == "meta":
        return ""
    if _backend.resolve(input.device) == "triton":
        return "_triton"
    if input.device.type != "cpu" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "minitorch_ext::embedding_fwd", input.device.type.upper()):
        raise NotImplementedError(f"minitorch_ext.nn.functional.embedding: this build has no "
                                  f"{input.device.type} embedding kernel for the 'cpp' backend; "
                                  f"use_backend('triton') for {input.device.type} tensors")
    return ""


def _check_triton_args(input: Tensor, weight: Tensor) -> None:
    # the C++ ops check these themselves; the Triton path checks them here
    if input.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"Expected tensor for argument #1 'indices' to have one of the following scalar types: "
                           f"Long, Int; but got {input.type()} instead (while checking arguments for embedding)")
    if weight.dim() != 2:
        raise RuntimeError("'weight' must be 2-D")
    if input.numel() and (int(input.min()) < 0 or int(input.max()) >= weight.shape[0]):
        raise IndexError("index out of range in self")


def embedding(input: Tensor, weight: Tensor, padding_idx: Optional[int] = None, max_norm: Optional[float] = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Same as torch.nn.functional.embedding (sparse=True excepted), on our kernels."""
    if not isinstance(input, Tensor):
        raise TypeError(f"embedding(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"embedding(): argument 'weight' (position 2) must be Tensor, not {type(weight).__name__}")
    if padding_idx is not None:
        if padding_idx > 0:
            assert padding_idx < weight.size(0), "Padding_idx must be within num_embeddings"
        elif padding_idx < 0:
            assert padding_idx >= -weight.size(0), "Padding_idx must be within num_embeddings"
            padding_idx = weight.size(0) + padding_idx
    else:
        padding_idx = -1
    if sparse:
        raise NotImplementedError("minitorch_ext.nn.functional.embedding: sparse=True (a sparse gradient) is not "
                                  "supported; use sparse=False (the dense, deterministic gradient)")
    sfx = _check_backend(weight)
    if sfx:
        _check_triton_args(input, weight)
    if max_norm is not None:
        input = input.contiguous()
        with torch.no_grad():
            _OPS.embedding_renorm_(weight, input, float(max_norm), float(norm_type))
    return getattr(_OPS, "embedding_fwd" + sfx)(weight, input, int(padding_idx), bool(scale_grad_by_freq))


__all__ = ["embedding"]
