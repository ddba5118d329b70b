"""How a Triton-backed op is registered with torch.library.

On a GPU: `torch.library.triton_op`, whose body launches kernels through
`torch.library.wrap_triton`, so torch.compile traces into the kernels.
Under Triton's interpreter (TRITON_INTERPRET=1, our CPU tests) that traced
path does not work (pytorch#152868), so the same function is registered as an
opaque `torch.library.custom_op` with an explicit fake kernel: eager calls,
opcheck and autograd behave the same, compile treats the op as a black box.
"""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_custom_op(name: str, *, mutates_args=(), fake=None):
    """Decorator: register `fn` as op `name` (triton_op on GPU, custom_op under the interpreter)."""

    def wrap(fn):
        if interpreting() or not hasattr(torch.library, "triton_op"):
            op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
            if fake is not None:
                op.register_fake(fake)
        else:
            op = torch.library.triton_op(name, fn, mutates_args=mutates_args)
        return op

    return wrap
