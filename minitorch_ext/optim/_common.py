"""Shared plumbing of the drop-in optimizers: device buckets, checks, errors."""
from __future__ import annotations

import torch

from ..ops import optim as _ops_optim

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def check_param(opt_name: str, p: torch.Tensor) -> None:
    """Run when a parameter's state is first created (as torch's fused
    optimizers check their params): dtype and device must be ones we have
    kernels for. RuntimeError, as torch's `fused=True` raises."""
    if p.dtype not in SUPPORTED_DTYPES or p.device.type not in ("cpu", "cuda", "meta"):
        raise RuntimeError(
            f"{opt_name}: params must be floating point tensors (float32, float64 or bfloat16) on cpu "
            f"or cuda (or meta), but got a {p.dtype} param on {p.device}")


def grad_of(p: torch.Tensor) -> torch.Tensor | None:
    """p.grad, laid out in memory as `p` is. The step kernels walk a param, its grad
    and its state with one flat index, so they need one memory order; a grad of
    another order (e.g. a transposed grad of a contiguous param, which torch steps)
    is copied once into p's layout and put back as ``p.grad``, so the in-place
    unscale/clip of the step lands in ``p.grad`` as torch's does. Strides of size-1
    dimensions are ignored (they address nothing)."""
    g = p.grad
    if g is None or g.is_sparse or g.shape != p.shape or g.stride() == p.stride():  # the usual case: one compare
        return g
    if any(n > 1 and a != b for n, a, b in zip(p.shape, g.stride(), p.stride())):
        relaid = torch.empty_like(p, memory_format=torch.preserve_format)
        relaid.copy_(g)
        p.grad = relaid
        g = relaid
    return g


def no_sparse(opt_name: str, g: torch.Tensor, hint: str = "") -> None:
    if g.is_sparse:
        raise RuntimeError(f"{opt_name} does not support sparse gradients{hint}")


def buckets(params: list[torch.Tensor]) -> list[list[int]]:
    """Indices of `params` grouped by device (one bucket in the usual case).
    Within a bucket the kernel handles mixed dtypes itself."""
    if not params:
        return []
    # get_device() (an int, -1 for CPU) costs a third of `.device`, which builds
    # a torch.device per call: this check runs over every param of every step.
    d0 = params[0].get_device()
    if all(p.get_device() == d0 for p in params):
        return [list(range(len(params)))]
    out: dict[torch.device, list[int]] = {}
    for i, p in enumerate(params):
        out.setdefault(p.device, []).append(i)
    return list(out.values())


def on(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    if t is None or t.device == device:
        return t
    return t.to(device, non_blocking=True)


def amp_args(opt) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """GradScaler's protocol for fused optimizers: it sets `grad_scale` (None
    when the grads were already unscaled) and `found_inf` on the optimizer
    before calling step(), and deletes them after."""
    return getattr(opt, "grad_scale", None), getattr(opt, "found_inf", None)


def op(name: str, device: torch.device):
    """The registered op for `name` on `device` under the current backend (cpp or triton)."""
    return _ops_optim.op(name, device)


def group_fast_path(group):
    """The eager group-step entry point (``_C.optim_eager``) when it may be tried
    for this group: the C++ backend, eager mode, a float lr. None otherwise. The
    entry point itself declines (returns False) whenever the general path is
    needed, e.g. on the first step; see csrc/optim/optim_py.cpp."""
    params = group["params"]
    if not params or isinstance(group["lr"], torch.Tensor) or torch.compiler.is_compiling():
        return None
    if _ops_optim.backend_for(params[0].device) != "cpp":
        return None
    return _ops_optim.eager()


def lr_args(lr, device: torch.device):
    """(lr float, lr_tensor) for the ops: a tensor lr is passed as a tensor."""
    if isinstance(lr, torch.Tensor):
        return 0.0, on(lr.detach().reshape(()), device)
    return float(lr), None


def steps_to_param_device(opt) -> None:
    """After loading a state_dict: torch's non-fused optimizers keep `step` on
    the CPU; our CUDA kernels want it beside the param, as torch's fused ones."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st and "step" in st and torch.is_tensor(st["step"]) and st["step"].device != p.device \
                    and p.device.type != "cpu":
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


class FusedStep:
    """What every fused optimizer shares: step() (closure, GradScaler's
    grad_scale/found_inf protocol, one `_step_group` call per param group),
    clip_grad_norm_ folded into the step, and load_state_dict (steps moved
    beside their params). Mixed in before the torch.optim class it replaces."""

    _step_supports_amp_scaling = True
    _pending_clip: tuple[torch.Tensor, float] | None = None

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        steps_to_param_device(self)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                        foreach: bool | None = None) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_(params, max_norm, ...)`` over this
        optimizer's parameters, with the scaling done by the next ``step()``.

        The global norm is computed now (one read of every grad) and returned,
        as torch returns it. The multiply by ``min(max_norm / (norm + 1e-6), 1)``
        is left to the step kernel, which reads every grad anyway: it scales each
        grad as it loads it, rounds to the grad's dtype, writes it back and steps
        with it, so parameters, state and grads after ``step()`` are bitwise what
        ``clip_grad_norm_`` followed by ``step()`` leaves -- without the clip's own
        read-and-write pass over the grads.

        The one difference: between this call and ``step()`` the grads still hold
        their unclipped values. Code that reads them in between should call
        ``minitorch_ext.nn.utils.clip_grad_norm_`` instead. ``zero_grad()`` drops
        a pending clip; a second call applies the pending one first. With
        ``GradScaler``, call ``scaler.unscale_(optimizer)`` first, as torch's
        recipe says. Norm types other than 2, 1 and inf, grads of mixed float64
        and other dtypes, and torch.compile clip at once, as the function does.
        ``foreach`` is accepted and ignored."""
        from ..nn.utils import clip_grad as CG

        self._apply_pending_clip()
        params = [p for group in self.param_groups for p in group["params"]]
        norm_type = float(norm_type)
        if norm_type not in CG._OUR_NORMS or torch.compiler.is_compiling():
            return CG.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
        grads = CG.grads_of(params)
        if not grads:
            return torch.tensor(0.0)
        total = CG.total_norm_of(grads, norm_type, error_if_nonfinite)
        # The kernels take the coefficient in the opmath type of each grad: exact when
        # the norm is float32 (no float64 grad) or every grad is float64.
        if total.dtype == torch.float32 or all(g.dtype == torch.float64 for g in grads):
            self._pending_clip = (total, float(max_norm))
        else:
            CG.scale_by_clip_coef_(grads, total, max_norm)
        return CG.returned_norm(total, grads)

    def _apply_pending_clip(self) -> None:
        """Scale the grads by a clip still waiting for step() (a second clip call)."""
        pending, self._pending_clip = self._pending_clip, None
        if pending is not None:
            from ..nn.utils import clip_grad as CG

            grads = CG.grads_of([p for group in self.param_groups for p in group["params"]])
            if grads:
                CG.scale_by_clip_coef_(grads, *pending)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._pending_clip = None  # the grads it was for are gone
        super().zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step (closure: re-evaluates the model, returns the loss)."""
        loss = None
        if closure is not None:
            self._apply_pending_clip()  # the closure recomputes the grads: clip what it was asked to, now
            with torch.enable_grad():
                loss = closure()
        grad_scale, found_inf = amp_args(self)
        clip, self._pending_clip = self._pending_clip, None
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf, clip)
        return loss
