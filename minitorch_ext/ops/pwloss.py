"""Pointwise losses, Python side: torch's argument semantics, fake kernels, autograd, the functionals.

Registered ops (schemas and semantics in csrc/ops.cpp, "pwloss family"):

    torch.ops.minitorch_ext.pwloss_fwd / pwloss_bwd                C++ (csrc/loss/pwloss_cpu.cpp; CUDA: pwloss_cuda.cu)
    torch.ops.minitorch_ext.pwloss_fwd_triton / pwloss_bwd_triton  Triton (kernels/pwloss.py), same schemas

One generic op pair serves seven losses, chosen by ``kind``: mse, l1, smooth_l1 (beta), huber
(delta), bce, bce_logits, kl_div (log_target). Here each public function applies torch's rules
(the legacy size_average/reduce arguments, the reduction names, torch's dtype promotion,
broadcasting as torch's F.* does, its shape errors), then broadcasts the operands with
``expand`` (a view: the kernels read the expanded strides; autograd sums a broadcast
target's gradient back through the expand) and calls the op. ``register_autograd`` wires the
backward op, which returns the input and/or target gradient in one pass, as autograd asks.

Public functionals with torch.nn.functional's signatures: mse_loss, l1_loss, smooth_l1_loss,
huber_loss, binary_cross_entropy, binary_cross_entropy_with_logits, kl_div (re-exported by
minitorch_ext.nn.functional).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction

from .. import _backend
from ._registry import register_autocast_policy, scalar_type_name, triton_custom_op

_OPS = torch.ops.minitorch_ext
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_RED = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}


# ---------------------------------------------------------------------------
# fake (meta) kernels
# ---------------------------------------------------------------------------

def _fake_fwd(input, target, weight, pos_weight, kind, param, reduction, log_target):
    if reduction == 0:
        return torch.empty(input.shape, dtype=input.dtype, device=input.device)
    return torch.empty((), dtype=input.dtype, device=input.device)


def _fake_bwd(grad_output, input, target, weight, pos_weight, kind, param, reduction, log_target, need_input,
              need_target):
    def out(need):
        return torch.empty(input.shape if need else (0,), dtype=input.dtype, device=input.device)

    return out(need_input), out(need_target)


torch.library.register_fake("minitorch_ext::pwloss_fwd")(_fake_fwd)
torch.library.register_fake("minitorch_ext::pwloss_bwd")(_fake_bwd)


# ---------------------------------------------------------------------------
# Triton ops: minitorch_ext.kernels.pwloss behind the same schemas
# ---------------------------------------------------------------------------

@triton_custom_op("minitorch_ext::pwloss_fwd_triton", mutates_args=(), fake=_fake_fwd)
def _fwd_triton(input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor], kind: str,
                param: float, reduction: int, log_target: bool) -> Tensor:
    from minitorch_ext.kernels import pwloss as K

    return K.pwloss_fwd(input, target, weight, pos_weight, kind, param, reduction, log_target)


@triton_custom_op("minitorch_ext::pwloss_bwd_triton", mutates_args=(), fake=_fake_bwd)
def _bwd_triton(grad_output: Tensor, input: Tensor, target: Tensor, weight: Optional[Tensor],
                pos_weight: Optional[Tensor], kind: str, param: float, reduction: int, log_target: bool,
                need_input: bool, need_target: bool) -> Tuple[Tensor, Tensor]:
    from minitorch_ext.kernels import pwloss as K

    return K.pwloss_bwd(grad_output, input, target, weight, pos_weight, kind, param, reduction, log_target,
                        need_input, need_target)


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------

def _setup(ctx, inputs, output):
    input, target, weight, pos_weight, kind, param, reduction, log_target = inputs
    ctx.save_for_backward(input, target, weight, pos_weight)
    ctx.args = (kind, param, reduction, log_target)


def _wire(sfx: str) -> None:
    def backward(ctx, grad_out):
        input, target, weight, pos_weight = ctx.saved_tensors
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx, gt = getattr(_OPS, "pwloss_bwd" + sfx)(grad_out, input, target, weight, pos_weight, *ctx.args,
                                                   need_x, need_t)
        return (gx if need_x else None), (gt if need_t else None), None, None, None, None, None, None

    torch.library.register_autograd("minitorch_ext::pwloss_fwd" + sfx, backward, setup_context=_setup)
    torch.library.register_autograd("minitorch_ext::pwloss_bwd" + sfx, _double_backward,
                                    setup_context=_setup_bwd)


# ---------------------------------------------------------------------------
# double backward (torch offers it for every one of these losses): the backward op computes
# gx = g * a(x, t), gt = g * b(x, t) with g = grad_output * scale; its own derivatives need
# a, b and their partials, composed here from differentiable pointwise torch ops (none of them
# a loss op), so third and higher derivatives follow by autograd.
# ---------------------------------------------------------------------------

def _scale(x: Tensor, reduction: int) -> float:
    if reduction == 1:
        return 1.0 / x.numel() if x.numel() else float("nan")
    if reduction == 3 and x.dim() > 0:
        return 1.0 / x.shape[0] if x.shape[0] else float("nan")
    return 1.0


def _logsig(x: Tensor) -> Tensor:
    return torch.clamp_max(x, 0) - torch.log1p(torch.exp(-x.abs()))


def _partials(kind: str, p: float, log_target: bool, x: Tensor, t: Tensor, w, pw):
    """(a, b, a_x, a_t, b_x, b_t): the first derivatives of the loss in x and t, and theirs."""
    zero = torch.zeros_like(x)
    if kind == "mse":
        d = x - t
        a = 2 * d
        return a, -a, zero + 2, zero - 2, zero - 2, zero + 2
    if kind in ("l1", "smooth_l1", "huber"):
        d = x - t
        if kind == "l1":
            a, h = torch.sign(d), zero
        elif kind == "smooth_l1":
            a = torch.where(d <= -p, -1.0, torch.where(d >= p, 1.0, d / p))
            h = torch.where(d.abs() < p, 1.0 / p, 0.0).to(x.dtype)
        else:
            a = torch.where(d <= -p, -p, torch.where(d >= p, p, d))
            h = torch.where(d.abs() < p, 1.0, 0.0).to(x.dtype)
        return a, -a, h, -h, -h, h
    if kind == "bce":
        q = (1 - x) * x
        a = (x - t) / q.clamp_min(1e-12)
        b = torch.log1p(-x) - torch.log(x)
        a_x = (q - (x - t) * (1 - 2 * x)) / (q * q)
        r = (zero, a, b, a_x, -1 / q, -1 / q, zero)
    elif kind == "bce_logits":
        sig = torch.sigmoid(x)
        pwv = pw if pw is not None else torch.ones_like(x)
        lw = 1 + (pwv - 1) * t
        a = lw * sig - pwv * t
        b = _logsig(-x) - _logsig(x) * pwv if pw is not None else -x
        r = (zero, a, b, lw * sig * (1 - sig), (pwv - 1) * sig - pwv, -sig - pwv * (1 - sig), zero)
    elif log_target:
        e = torch.exp(t)
        return -e, e * (t - x + 1), zero, -e, -e, e * (t - x + 2)
    else:
        lt = torch.where(t == 0, 0.0, torch.log(t)).to(x.dtype)
        return -t, lt + t / t - x, zero, zero - 1, zero - 1, 1 / t
    _, a, b, a_x, a_t, b_x, b_t = r
    if w is not None:
        a, b, a_x, a_t, b_x, b_t = (v * w for v in (a, b, a_x, a_t, b_x, b_t))
    return a, b, a_x, a_t, b_x, b_t


def _setup_bwd(ctx, inputs, output):
    grad_output, input, target, weight, pos_weight, kind, param, reduction, log_target, need_x, need_t = inputs
    ctx.save_for_backward(grad_output, input, target, weight, pos_weight)
    ctx.args = (kind, param, reduction, log_target, need_x, need_t)


def _double_backward(ctx, ggx, ggt):
    go, x, t, w, pw = ctx.saved_tensors
    kind, p, reduction, log_target, need_x, need_t = ctx.args
    a, b, a_x, a_t, b_x, b_t = _partials(kind, p, log_target, x, t, w, pw)
    s = _scale(x, reduction)
    gx_up = ggx if (need_x and ggx is not None and ggx.shape == x.shape) else None
    gt_up = ggt if (need_t and ggt is not None and ggt.shape == x.shape) else None
    dgo = dx = dt = None
    terms_go = [u * v for u, v in ((gx_up, a), (gt_up, b)) if u is not None]
    if terms_go and ctx.needs_input_grad[0]:
        dgo = sum(terms_go) * s
        if reduction != 0:
            dgo = dgo.sum().reshape(go.shape)
    g = go * s if reduction == 0 else go.reshape(()) * s
    if ctx.needs_input_grad[1]:
        tx = [u * v for u, v in ((gx_up, a_x), (gt_up, b_x)) if u is not None]
        dx = g * sum(tx) if tx else None
    if ctx.needs_input_grad[2]:
        tt = [u * v for u, v in ((gx_up, a_t), (gt_up, b_t)) if u is not None]
        dt = g * sum(tt) if tt else None
    return (dgo, dx, dt) + (None,) * 8


_wire("")
_wire("_triton")

# torch's autocast runs every one of these losses in float32 (its fp32 list on CPU and CUDA;
# binary_cross_entropy is refused under CUDA autocast by torch, here it runs in float32)
for _name in ("pwloss_fwd", "pwloss_fwd_triton"):
    register_autocast_policy(f"minitorch_ext::{_name}", cpu="fp32", cuda="fp32")


# ---------------------------------------------------------------------------
# argument handling: torch's semantics
# ---------------------------------------------------------------------------

def _suffix(fn: str, input: Tensor) -> str:
    if input.device.type == "meta":
        return ""
    if _backend.resolve(input.device) == "triton":
        return "_triton"
    if input.device.type != "cpu" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "minitorch_ext::pwloss_fwd", input.device.type.upper()):
        raise NotImplementedError(f"minitorch_ext.nn.functional.{fn}: this build has no {input.device.type} loss "
                                  f"kernel for the 'cpp' backend; use_backend('triton') for {input.device.type} tensors")
    return ""


def _check_tensors(fn: str, **ts) -> None:
    for i, (name, t) in enumerate(ts.items()):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{fn}(): argument '{name}' (position {i + 1}) must be Tensor, not {type(t).__name__}")


def _check_dtype(fn: str, dtype: torch.dtype, device: str = "cpu") -> None:
    if dtype not in _FLOATS and not (dtype == torch.float16 and device == "cuda"):
        name = scalar_type_name(dtype)
        raise NotImplementedError(f'"{fn}" not implemented for \'{name}\' (minitorch_ext losses take float32, '
                                  f'float64 and bfloat16)')


def _reduction(size_average, reduce, reduction: str, allow_batchmean: bool = False) -> int:
    if size_average is not None or reduce is not None:
        return _RED[_Reduction.legacy_get_string(size_average, reduce)]
    if reduction == "batchmean" and allow_batchmean:
        return 3
    return _Reduction.get_enum(reduction)  # torch's ValueError "... is not a valid value for reduction"


def _size_warning(input: Tensor, target: Tensor) -> None:
    if target.size() != input.size():
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
                      "This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=3)


def _no_grad_arg(fn: str, name: str, t: Optional[Tensor]) -> None:
    if t is not None and t.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"The function '{fn}' is not differentiable with respect to argument '{name}'. "
                           "This input cannot have requires_grad True.")


def _run(fn: str, kind: str, input: Tensor, target: Tensor, red: int, param: float = 0.0, log_target: bool = False,
         weight: Optional[Tensor] = None, pos_weight: Optional[Tensor] = None, dtype: Optional[torch.dtype] = None):
    """Promote to `dtype`, broadcast every operand to one shape (views), run the op."""
    dtype = dtype or input.dtype
    _check_dtype(fn, dtype, input.device.type)
    sfx = _suffix(fn, input)
    shape = torch.broadcast_shapes(input.shape, target.shape)
    x = input.to(dtype).expand(shape)
    t = target.to(dtype).expand(shape)
    w = None if weight is None else weight.to(dtype).expand(shape)
    pw = None if pos_weight is None else pos_weight.to(dtype).expand(shape)
    return getattr(_OPS, "pwloss_fwd" + sfx)(x, t, w, pw, kind, float(param), red, bool(log_target))


def _weighted_tail(fn: str, loss_none: Tensor, weight: Tensor, input: Tensor, reduction: str, mean_by_weight: bool):
    # torch's own composition for the (2.12+) weight argument of mse/l1/huber: loss * weight, then the reduction
    if weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    wl = loss_none * weight
    if reduction == "none":
        return wl
    if reduction == "sum":
        return torch.sum(wl)
    if reduction == "mean":
        return torch.sum(wl) / torch.sum(weight) if mean_by_weight else wl.mean()
    raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")


# ---------------------------------------------------------------------------
# public entry points (torch.nn.functional signatures)
# ---------------------------------------------------------------------------

def mse_loss(input: Tensor, target: Tensor, size_average: Optional[bool] = None, reduce: Optional[bool] = None,
             reduction: str = "mean", weight: Optional[Tensor] = None) -> Tensor:
    """Same as torch.nn.functional.mse_loss, on our kernel."""
    _check_tensors("mse_loss", input=input, target=target)
    _size_warning(input, target)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    dtype = _result_type(input, target)
    if weight is not None:
        return _weighted_tail("mse_loss", _run("mse_loss", "mse", input, target, 0, dtype=dtype), weight, input,
                              reduction, True)
    return _run("mse_loss", "mse", input, target, _Reduction.get_enum(reduction), dtype=dtype)


def l1_loss(input: Tensor, target: Tensor, size_average: Optional[bool] = None, reduce: Optional[bool] = None,
            reduction: str = "mean", weight: Optional[Tensor] = None) -> Tensor:
    """Same as torch.nn.functional.l1_loss, on our kernel."""
    _check_tensors("l1_loss", input=input, target=target)
    _size_warning(input, target)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    dtype = _result_type(input, target)
    if weight is not None:
        return _weighted_tail("l1_loss", _run("l1_loss", "l1", input, target, 0, dtype=dtype), weight, input,
                              reduction, True)
    return _run("l1_loss", "l1", input, target, _Reduction.get_enum(reduction), dtype=dtype)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average: Optional[bool] = None, reduce: Optional[bool] = None,
                   reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """Same as torch.nn.functional.smooth_l1_loss (beta == 0 is l1_loss, as torch), on our kernel."""
    _check_tensors("smooth_l1_loss", input=input, target=target)
    _size_warning(input, target)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    red = _Reduction.get_enum(reduction)
    dtype = _result_type(input, target)
    if beta == 0.0:
        return _run("smooth_l1_loss", "l1", input, target, red, dtype=dtype)
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    return _run("smooth_l1_loss", "smooth_l1", input, target, red, param=beta, dtype=dtype)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Optional[Tensor] = None) -> Tensor:
    """Same as torch.nn.functional.huber_loss (the output keeps input's dtype, as torch), on our kernel."""
    _check_tensors("huber_loss", input=input, target=target)
    _size_warning(input, target)
    red = _Reduction.get_enum(reduction)
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    if not input.is_floating_point():
        raise RuntimeError(f"result type Float can't be cast to the desired output type "
                           f"{scalar_type_name(input.dtype)}")
    if weight is not None:
        return _weighted_tail("huber_loss", _run("huber_loss", "huber", input, target, 0, param=delta), weight,
                              input, reduction, False)
    return _run("huber_loss", "huber", input, target, red, param=delta)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                         size_average: Optional[bool] = None, reduce: Optional[bool] = None,
                         reduction: str = "mean") -> Tensor:
    """Same as torch.nn.functional.binary_cross_entropy (each log clamped to >= -100; input outside
    [0, 1] is a RuntimeError), on our kernel."""
    _check_tensors("binary_cross_entropy", input=input, target=target, weight=weight)
    red = _reduction(size_average, reduce, reduction)
    if target.size() != input.size():
        raise ValueError(f"Using a target size ({target.size()}) that is different to the input size "
                         f"({input.size()}) is deprecated. Please ensure they have the same size.")
    if target.dtype != input.dtype:
        raise RuntimeError(f"Found dtype {_tname(target.dtype)} but expected {_tname(input.dtype)}")
    if weight is not None:
        try:
            torch.broadcast_shapes(target.size(), weight.size())
        except RuntimeError as e:
            raise RuntimeError(f"binary_cross_entropy: weight of shape {tuple(weight.shape)} does not broadcast to "
                               f"the input's shape {tuple(input.shape)}: {e}") from None
        _no_grad_arg("binary_cross_entropy", "weight", weight)
    return _run("binary_cross_entropy", "bce", input, target, red, weight=weight)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                                     size_average: Optional[bool] = None, reduce: Optional[bool] = None,
                                     reduction: str = "mean", pos_weight: Optional[Tensor] = None) -> Tensor:
    """Same as torch.nn.functional.binary_cross_entropy_with_logits (the stable log-sigmoid form;
    pos_weight broadcast against the input, i.e. over its last dim for a [C] pos_weight), on our kernel."""
    _check_tensors("binary_cross_entropy_with_logits", input=input, target=target, weight=weight,
                   pos_weight=pos_weight)
    red = _reduction(size_average, reduce, reduction)
    if target.size() != input.size():
        raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is not None:
            torch.broadcast_shapes(t.shape, input.shape)  # torch's "The size of tensor a ... must match" RuntimeError
            _no_grad_arg("binary_cross_entropy_with_logits", name, t)
    if not input.is_floating_point():
        _check_dtype("log_sigmoid_cpu", input.dtype)
    if not target.is_floating_point():
        raise RuntimeError(f"result type Float can't be cast to the desired output type {_tname(target.dtype)}")
    return _run("binary_cross_entropy_with_logits", "bce_logits", input, target, red, weight=weight,
                pos_weight=pos_weight, dtype=target.dtype)


def kl_div(input: Tensor, target: Tensor, size_average: Optional[bool] = None, reduce: Optional[bool] = None,
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """Same as torch.nn.functional.kl_div, every reduction incl. 'batchmean' (sum / input.size(0)), on our kernel."""
    _check_tensors("kl_div", input=input, target=target)
    if size_average is not None or reduce is not None:
        red = _RED[_Reduction.legacy_get_string(size_average, reduce)]
    else:
        if reduction == "mean":
            warnings.warn("reduction: 'mean' divides the total loss by both the batch size and the support size."
                          "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
                          "'mean' will be changed to behave the same as 'batchmean' in the next major release.",
                          stacklevel=2)
        red = 3 if reduction == "batchmean" else _Reduction.get_enum(reduction)
    if not input.is_floating_point() or not target.is_floating_point():
        raise RuntimeError("kl_div: Integral inputs not supported.")
    if red == 3 and input.dim() != 0 and input.shape != torch.broadcast_shapes(input.shape, target.shape):
        # torch divides by the size(0) of input as given, not of the broadcast shape
        return _run("kl_div", "kl_div", input, target, 2, log_target=log_target,
                    dtype=_result_type(input, target)) / input.size(0)
    return _run("kl_div", "kl_div", input, target, red, log_target=log_target,
                dtype=_result_type(input, target))


def _result_type(a: Tensor, b: Tensor) -> torch.dtype:
    # torch's promotion; the common same-dtype case without torch.result_type (dynamo cannot trace it)
    return a.dtype if a.dtype == b.dtype else torch.result_type(a, b)


_tname = scalar_type_name


__all__ = ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "kl_div"]
