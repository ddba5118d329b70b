"""The Triton embedding kernels (kernels/embedding.py), on CPU through Triton's interpreter (on
cuda where a GPU is visible and TRITON_INTERPRET is unset): the shared checker on tiny
samples, padding_idx, scale_grad_by_freq, and the backward equal to the C++ kernel's
(both sum each row in index order in float32: bitwise the same)."""
import pytest
import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases import embedding as C

try:
    import triton  # noqa: F401
    _HAVE_TRITON = True
except ImportError:
    _HAVE_TRITON = False

pytestmark = [pytest.mark.triton, pytest.mark.skipif(
    not _HAVE_TRITON or "triton" not in mte.available_backends("cpu"),
    reason="Triton cannot run here (needs triton, and TRITON_INTERPRET=1 without a GPU)")]

SPEC = C.spec()
MF = mte.nn.functional


@pytest.mark.parametrize("i", range(len(C.TRITON_FIXED)))
def test_triton_embedding_gradcheck(i):
    sample = SPEC.samples("triton")[i]
    leaves = sample.cast(torch.float64, "cpu", requires_grad=True)

    def f(w):
        with mte.use_backend("triton"):
            return sample.build(SPEC.ours, {**leaves, "weight": w})

    with testing.poisoned():
        assert torch.autograd.gradcheck(f, (leaves["weight"],), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_triton_embedding_opcheck():
    testing.check_opcheck(SPEC, SPEC.samples("triton")[0], "triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_triton_embedding_parity(dtype):
    samples = SPEC.samples("triton") + [C.embedding_sample(6, 5, (3, 4), seed=9, scale_grad_by_freq=True,
                                                           padding_idx=1, idx_dtype=torch.int32)]
    for sample in samples:
        testing.check_parity(SPEC, sample, "triton", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_backward_equals_cpp(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(9, 7, generator=g).to(dtype)
    idx = torch.randint(0, 4, (5, 3), generator=g)
    dy = torch.randn(5, 3, 7, generator=g).to(dtype)
    for sgbf in (False, True):
        grads = []
        for backend in ("triton", "cpp"):
            wg = w.clone().requires_grad_()
            with mte.use_backend(backend):
                y = MF.embedding(idx, wg, padding_idx=2, scale_grad_by_freq=sgbf)
                y.backward(dy)
            assert torch.equal(y, F.embedding(idx, w))
            grads.append(wg.grad)
        if sgbf:  # g * (1/count) summed: the C++ compiler may fuse it into an FMA, the interpreter does not
            torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)
        else:  # plain sums in the same order: bitwise
            assert torch.equal(grads[0], grads[1])
        assert not grads[0][2].any()


def test_triton_bad_indices():
    w = torch.randn(5, 3)
    with mte.use_backend("triton"):
        with pytest.raises(IndexError, match="index out of range in self"):
            MF.embedding(torch.tensor([5]), w)
        with pytest.raises(RuntimeError, match="Long, Int"):
            MF.embedding(torch.tensor([1.0]), w)
