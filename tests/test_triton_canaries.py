"""Canaries for the Triton interpreter features our kernels rely on.

The CPU tests judge the Triton kernels through Triton's interpreter, which has
had bugs of its own (bf16 tl.dot once wrong, triton#11584; bf16 stores truncate
rather than round in 3.8). If a canary fails, a kernel test failing beside it
may be the interpreter's fault, not the kernel's.
"""
import os

import pytest

import minitorch_ext as mte

pytestmark = pytest.mark.skipif("triton" not in mte.available_backends("cpu"),
                                reason="Triton cannot run CPU tensors here (needs triton and TRITON_INTERPRET=1)")


def test_interpreter_is_on():
    assert os.environ.get("TRITON_INTERPRET") == "1"


def test_norm_kernel_canaries():
    from minitorch_ext.kernels import norm

    results = norm.interpreter_canaries()
    assert len(results) >= 5
    bad = [name for name, ok in results if not ok]
    assert not bad, f"interpreter canaries failed: {bad}"
