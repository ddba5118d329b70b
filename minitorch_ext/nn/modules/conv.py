"""Conv1d, Conv2d: drop-ins for torch.nn.Conv1d / Conv2d, on our implicit-GEMM kernels.

They subclass torch's modules and replace only the computation, so the
constructor (in_channels, out_channels, kernel_size, stride, padding,
dilation, groups, bias, padding_mode, device, dtype), its ValueErrors, the
attributes, `weight` / `bias` and their initialisation (the same kaiming- and
uniform draws in the same order: equal weights under the same seed), the
state_dict keys and the repr are torch's own. padding_mode 'reflect',
'replicate' and 'circular' go to the kernel, which reads the padded input
through its index tables (torch calls F.pad first; we never copy).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ...ops.conv import _conv


def _pairs(rp, nd):
    # torch's _reversed_padding_repeated_twice: last dim first, (before, after) each
    return [(rp[2 * (nd - 1 - d)], rp[2 * (nd - 1 - d) + 1]) for d in range(nd)]


class Conv1d(nn.Conv1d):
    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            return _conv(input, weight, bias, self.stride, _pairs(self._reversed_padding_repeated_twice, 1),
                         self.dilation, self.groups, 1, self.padding_mode)
        return _conv(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, 1)


class Conv2d(nn.Conv2d):
    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            return _conv(input, weight, bias, self.stride, _pairs(self._reversed_padding_repeated_twice, 2),
                         self.dilation, self.groups, 2, self.padding_mode)
        return _conv(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, 2)


__all__ = ["Conv1d", "Conv2d"]
