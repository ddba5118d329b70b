"""Cross-entropy family, Python side: fake kernels, autograd, torch's argument semantics, the functionals.

Registered ops (schemas and semantics in csrc/ops.cpp, C++ kernels in csrc/loss/ce_cpu.cpp,
CUDA in csrc/loss/ce_cuda.cu):

    torch.ops.minitorch_ext.ce_fwd / ce_bwd                 C++ (CPU), CUDA
    torch.ops.minitorch_ext.ce_fwd_triton / ce_bwd_triton   Triton (kernels/ce.py), same schemas

The kernels see the input as [N, C, D] (an (N, C) input is D = 1 with its own strides,
(N, C, d1, ...) is D = d1*..., an unbatched (C,) input is N = D = 1) and compute the
loss *and* the input gradient in one pass per row when the input requires grad (the
gradient already scaled for the reduction), so no softmax is ever stored. ce_fwd gets
`register_autograd`: backward multiplies the saved gradient by grad_output in place
(ce_bwd; nothing to do for grad_output == 1, the usual loss.backward()) and returns it,
so the only input-sized buffer is the gradient itself. That in-place path is taken only
for calls through the functionals here (they drop the op's grad_input output, so nobody
else sees it) and when the graph is not kept; a raw-op caller's grad_input output is never
changed. When the graph is kept (retain_graph=True, create_graph, gradcheck's repeated
calls) backward works on a copy, so calling it again gives the same answer. Double
backward is refused with a clear error.

Public functionals with torch.nn.functional's signatures: cross_entropy, nll_loss
(re-exported by minitorch_ext.nn.functional). Not supported, each refused with a clear
error: a weight that requires grad (torch refuses it too for class indices), a
probability target that requires grad, float16 on the CPU. log_softmax itself stays the
activation family's (minitorch_ext.ops.activation), which already has its own row kernel.
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from ._registry import register_autocast_policy, scalar_type_name, triton_custom_op

_OPS = torch.ops.minitorch_ext
_FLOATS = (torch.float32, torch.float64, torch.bfloat16)
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


_name = scalar_type_name


# ---------------------------------------------------------------------------
# fake (meta) kernels
# ---------------------------------------------------------------------------

def _fake_fwd(input, target, weight, reduction, ignore_index, label_smoothing, log_input, compute_grad):
    N, C, D = input.shape
    loss = input.new_empty((N, D) if reduction == 0 else ())
    grad = input.new_empty((N, C, D) if compute_grad else (0,))
    return loss, grad


def _fake_bwd(grad_output, grad_input, reduction):
    return None


torch.library.register_fake("minitorch_ext::ce_fwd")(_fake_fwd)
torch.library.register_fake("minitorch_ext::ce_bwd")(_fake_bwd)


# ---------------------------------------------------------------------------
# Triton ops: minitorch_ext.kernels.ce behind the same schemas
# ---------------------------------------------------------------------------

@triton_custom_op("minitorch_ext::ce_fwd_triton", mutates_args=(), fake=_fake_fwd)
def _fwd_triton(input: Tensor, target: Tensor, weight: Optional[Tensor], reduction: int, ignore_index: int,
                label_smoothing: float, log_input: bool, compute_grad: bool) -> Tuple[Tensor, Tensor]:
    from minitorch_ext.kernels import ce as K

    return K.ce_fwd(input, target, weight, reduction, ignore_index, label_smoothing, log_input, compute_grad)


@triton_custom_op("minitorch_ext::ce_bwd_triton", mutates_args=("grad_input",), fake=_fake_bwd)
def _bwd_triton(grad_output: Tensor, grad_input: Tensor, reduction: int) -> None:
    from minitorch_ext.kernels import ce as K

    K.ce_bwd(grad_output, grad_input, reduction)


# ---------------------------------------------------------------------------
# autograd: the saved gradient, scaled in place by grad_output
# ---------------------------------------------------------------------------

# Set while the functionals below call ce_fwd: the gradient output is then private to the
# autograd graph (the functional drops it), so backward may scale it in place. A raw-op
# caller keeps its grad_input output untouched (backward works on a copy).
_OWNED = threading.local()


def _setup(ctx, inputs, output):
    ctx.owned = getattr(_OWNED, "on", False)
    ctx.reduction = inputs[3]
    ctx.compute_grad = inputs[7]
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    # no zero-filled input-sized grad for the (never used) grad_input output
    ctx.set_materialize_grads(False)


def _keep_graph(g: Tensor) -> bool:
    """Whether the running backward keeps the graph (retain_graph / create_graph, gradcheck's
    repeated calls): then the saved gradient must survive this call. Unknown (tracing: AOT
    autograd / torch.compile see fake or functional tensors; a torch without the query):
    assume it does."""
    if type(g) is not torch.Tensor or torch.compiler.is_compiling():
        return True
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if query is None:
        return True
    try:
        return bool(query())
    except Exception:  # noqa: BLE001  (not inside an engine graph task)
        return True


def _wire(sfx: str) -> None:
    def backward(ctx, grad_loss, grad_saved):
        if not ctx.compute_grad:
            raise RuntimeError(f"minitorch_ext::ce_fwd{sfx}: backward needs the gradient computed in the forward "
                               f"pass; call the op with compute_grad=True when input requires grad")
        if torch.is_grad_enabled():
            raise RuntimeError("minitorch_ext cross_entropy/nll_loss: double backward (create_graph=True) is not "
                               "supported: the fused kernel computes the input gradient in the forward pass")
        (g,) = ctx.saved_tensors
        if grad_loss is None:  # the loss was not used: no gradient
            return (None,) * 8
        if not ctx.owned or _keep_graph(g):
            g = g.clone()  # the graph may run backward again: keep the saved gradient intact
        getattr(_OPS, "ce_bwd" + sfx)(grad_loss, g, ctx.reduction)
        return (g,) + (None,) * 7

    torch.library.register_autograd("minitorch_ext::ce_fwd" + sfx, backward, setup_context=_setup)


_wire("")
_wire("_triton")

# torch's autocast runs nll_loss / cross_entropy / log_softmax in float32 (CPU and CUDA)
register_autocast_policy("minitorch_ext::ce_fwd", cpu="fp32", cuda="fp32")
register_autocast_policy("minitorch_ext::ce_fwd_triton", cpu="fp32", cuda="fp32")


# ---------------------------------------------------------------------------
# argument checks: torch's error types and messages, in torch's order
# ---------------------------------------------------------------------------

def _backend_sfx(fn: str, input: Tensor) -> str:
    if input.device.type == "meta":
        return ""
    if _backend.resolve(input.device) == "triton":
        return "_triton"
    if input.device.type != "cpu" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "minitorch_ext::ce_fwd", input.device.type.upper()):
        raise NotImplementedError(f"minitorch_ext.nn.functional.{fn}: this build has no {input.device.type} "
                                  f"cross-entropy kernel for the 'cpp' backend; use_backend('triton') for "
                                  f"{input.device.type} tensors")
    return ""


def reduction_enum(size_average, reduce, reduction: str) -> int:
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return _REDUCTIONS[reduction]


def _check_weight(weight: Optional[Tensor], input: Tensor, C: int, prefix: str = "") -> Optional[Tensor]:
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight: expected a Tensor or None, got {type(weight).__name__}")
    if weight.dim() != 1 or weight.numel() != C:
        raise RuntimeError(f"{prefix}weight tensor should be defined either for all {C} classes or no classes but "
                           f"got weight tensor of shape: {list(weight.shape)}")
    if weight.dtype != input.dtype:
        raise RuntimeError(f"expected scalar type {_name(input.dtype)} but found {_name(weight.dtype)}")
    if weight.device != input.device:
        raise RuntimeError(f"weight: expected a tensor on {input.device} (the device of input), got one on "
                           f"{weight.device}")
    if weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("The function 'nll_loss_forward' is not differentiable with respect to argument "
                           "'weight'. This input cannot have requires_grad True.")
    return weight


def _as3d(input: Tensor) -> Tensor:
    """input as [N, C, D] without a copy where a view exists."""
    if input.dim() == 1:
        return input.view(1, -1, 1)
    if input.dim() == 2:
        return input.unsqueeze(-1)
    N, C = input.shape[:2]
    return input.reshape(N, C, math.prod(input.shape[2:]))


def _class_target_checks(input: Tensor, target: Tensor) -> None:
    """nll_loss_nd's checks on a class-index target."""
    nd = input.dim()
    if nd < 1:
        raise ValueError("Expected 1 or more dimensions (got 0)")
    if nd != 1 and target.dim() >= 1 and input.shape[0] != target.shape[0]:
        raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
                         f"({target.shape[0]}).")
    if nd != 1 and target.dim() == 0:
        raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target batch_size (0).")
    if nd <= 2 and target.dim() > 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    if target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {_name(target.dtype)}")
    if nd <= 2:
        if nd == 1 and target.numel() != 1:
            raise RuntimeError(f"Expected target size [], got {list(target.shape)}")
    elif nd == 4:
        if target.dim() != 3:
            raise RuntimeError(f"only batches of spatial targets supported (3D tensors) but got targets of "
                               f"dimension: {target.dim()}")
        if tuple(target.shape) != (input.shape[0], *input.shape[2:]):
            raise RuntimeError(f"size mismatch (got input: {list(input.shape)} , target: {list(target.shape)}")
    elif tuple(target.shape) != (input.shape[0], *input.shape[2:]):
        raise RuntimeError(f"Expected target size {[input.shape[0], *input.shape[2:]]}, got {list(target.shape)}")


def _loss(fn: str, input, target, weight, reduction: int, ignore_index: int, label_smoothing: float,
          log_input: bool) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"{fn}(): argument 'target' (position 2) must be Tensor, not {type(target).__name__}")
    prob = not log_input and input.shape == target.shape
    if prob:
        if not target.is_floating_point():
            raise RuntimeError(f"Expected floating point type for target with class probabilities, got "
                               f"{_name(target.dtype)}")
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
    else:
        _class_target_checks(input, target)
    if not (0.0 <= label_smoothing <= 1.0):
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    if input.dtype not in _FLOATS and not (input.dtype == torch.float16 and input.device.type == "cuda"):
        raise NotImplementedError(f"\"{fn}\" not implemented for '{_name(input.dtype)}' (minitorch_ext: float32, "
                                  f"float64 and bfloat16; float16 on CUDA)")
    C = input.shape[1] if input.dim() >= 2 else input.shape[0]
    weight = _check_weight(weight, input, C, "cross_entropy: " if prob else "")
    if target.device != input.device:
        raise RuntimeError(f"target: expected a tensor on {input.device} (the device of input), got one on "
                           f"{target.device}")
    sfx = _backend_sfx(fn, input)
    x3 = _as3d(input)
    N, _, D = x3.shape
    if prob:
        if target.dtype != input.dtype:
            raise RuntimeError(f"target: expected dtype {input.dtype} (the dtype of input) for class "
                               f"probabilities, got {target.dtype}")
        if target.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError(f"minitorch_ext.nn.functional.{fn}: the gradient with respect to a "
                                      f"probability target is not implemented; pass target.detach()")
        t3 = _as3d(target).contiguous()
    else:
        t3 = target.reshape(N, D)
        if t3.dtype != torch.int64:
            t3 = t3.long()
    compute_grad = bool(input.requires_grad and torch.is_grad_enabled())
    _OWNED.on = True
    try:
        loss, _ = getattr(_OPS, "ce_fwd" + sfx)(x3, t3, weight, reduction, int(ignore_index),
                                               float(label_smoothing), bool(log_input), compute_grad)
    finally:
        _OWNED.on = False
    if reduction == 0:
        loss = loss.reshape(target.shape if not prob else input.shape[:1] + input.shape[2:]
                            if input.dim() >= 2 else ())
    return loss


# ---------------------------------------------------------------------------
# public entry points (torch.nn.functional signatures)
# ---------------------------------------------------------------------------

def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, size_average=None,
                  ignore_index: int = -100, reduce=None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Same as torch.nn.functional.cross_entropy (class indices or class probabilities, weight,
    ignore_index, label_smoothing, every reduction), on one fused kernel per row."""
    red = reduction_enum(size_average, reduce, reduction)
    return _loss("cross_entropy", input, target, weight, red, ignore_index, label_smoothing, False)


def nll_loss(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean") -> Tensor:
    """Same as torch.nn.functional.nll_loss (input: log-probabilities), on the cross-entropy kernel."""
    red = reduction_enum(size_average, reduce, reduction)
    return _loss("nll_loss", input, target, weight, red, ignore_index, 0.0, True)


__all__ = ["cross_entropy", "nll_loss", "reduction_enum"]
