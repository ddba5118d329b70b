"""Helpers every Triton kernel module shares: how kernels are launched, and
the bf16 store fix that Triton's interpreter needs.

Launching: on a GPU the Python entry points are registered with
torch.library.triton_op, which needs every launch to go through
torch.library.wrap_triton; under TRITON_INTERPRET=1 that traced path does not
work (pytorch#152868), so `launch` returns the bare kernel there.

bf16 stores: Triton's interpreter converts float32 -> bfloat16 by truncation
(round toward zero; triton 3.8 `cast_impl`), while compiled code rounds to
nearest even (cvt.rn.bf16.f32). That doubles the error of every bf16 output
on the CPU and turns 0.99999 into 0.996. So under the interpreter only, `store`
rounds bf16 outputs to nearest even with integer ops first; the truncating
conversion is then exact (except bf16 subnormals, which the interpreter
flushes to zero). Compiled kernels never see this branch.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETER = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def launch(kernel):
    """kernel[grid](...) launcher: traced through wrap_triton on a GPU (what
    torch.library.triton_op requires), the bare kernel under the interpreter."""
    if interpreting():
        return kernel
    return torch.library.wrap_triton(kernel)


@triton.jit
def rtne_bf16(x):
    """float32 x rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x == x, bits.to(tl.float32, bitcast=True), x)  # NaN stays NaN


@triton.jit
def store(ptrs, x, mask):
    """tl.store(ptrs, x, mask), converting to the pointer's dtype (bf16
    rounding fixed under the interpreter)."""
    if INTERPRETER:
        if ptrs.dtype.element_ty == tl.bfloat16:
            x = rtne_bf16(x.to(tl.float32))
    tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)
