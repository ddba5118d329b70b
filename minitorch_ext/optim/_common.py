"""Shared plumbing of the drop-in optimizers: device buckets, checks, errors."""
from __future__ import annotations

import torch

from ..ops import optim as _ops_optim

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def check_param(opt_name: str, p: torch.Tensor) -> None:
    """Run when a parameter's state is first created (as torch's fused
    optimizers check their params): dtype and device must be ones we have
    kernels for. RuntimeError, as torch's `fused=True` raises."""
    if p.dtype not in SUPPORTED_DTYPES or p.device.type not in ("cpu", "cuda"):
        raise RuntimeError(
            f"{opt_name}: params must be floating point tensors (float32, float64 or bfloat16) on cpu "
            f"or cuda, but got a {p.dtype} param on {p.device}")


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
    grad_scale/found_inf protocol, one `_step_group` call per param group) and
    load_state_dict (steps moved beside their params). Mixed in before the
    torch.optim class it replaces."""

    _step_supports_amp_scaling = True

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        steps_to_param_device(self)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step (closure: re-evaluates the model, returns the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale, found_inf = amp_args(self)
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf)
        return loss
