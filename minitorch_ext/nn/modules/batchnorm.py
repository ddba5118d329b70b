"""BatchNorm1d/2d, InstanceNorm1d/2d and GroupNorm on our kernels.

Each subclasses torch's module and replaces only the call to the functional: the
constructor, parameters, buffers (running_mean, running_var, num_batches_tracked),
initialisation, state_dict keys, repr, `_check_input_dim` and `_load_from_state_dict`
are torch's own, so a torch checkpoint loads into ours and back, and isinstance
checks written for torch's modules (torch.nn.utils.fusion, optimizers' weight-decay
filters) keep working. The bookkeeping around the call is torch's forward, line for
line: num_batches_tracked += 1 in training, momentum=None as the cumulative average
1/num_batches_tracked, eval mode from the running statistics.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...ops import bnorm as _F

__all__ = ["BatchNorm1d", "BatchNorm2d", "InstanceNorm1d", "InstanceNorm2d", "GroupNorm"]


class _BatchNormMixin:
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = True if self.training else (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return _F.batch_norm(input, self.running_mean if use_buffers else None,
                             self.running_var if use_buffers else None, self.weight, self.bias, bn_training,
                             factor, self.eps)


class BatchNorm1d(_BatchNormMixin, torch.nn.BatchNorm1d):
    """Same as torch.nn.BatchNorm1d (2-D [N, C] or 3-D [N, C, L] input), on our kernels."""


class BatchNorm2d(_BatchNormMixin, torch.nn.BatchNorm2d):
    """Same as torch.nn.BatchNorm2d (4-D input, contiguous or channels_last), on our kernels."""


class _InstanceNormMixin:
    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        return _F.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training or not self.track_running_stats,
                                self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_InstanceNormMixin, torch.nn.InstanceNorm1d):
    """Same as torch.nn.InstanceNorm1d (batched or unbatched), on our kernels."""


class InstanceNorm2d(_InstanceNormMixin, torch.nn.InstanceNorm2d):
    """Same as torch.nn.InstanceNorm2d (batched or unbatched), on our kernels."""


class GroupNorm(torch.nn.GroupNorm):
    """Same as torch.nn.GroupNorm, on our kernels."""

    def forward(self, input: Tensor) -> Tensor:
        return _F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
