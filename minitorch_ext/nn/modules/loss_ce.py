"""Cross-entropy modules: drop-ins for torch.nn.CrossEntropyLoss and torch.nn.NLLLoss.

Each subclasses torch's module, so the constructor (weight, size_average, ignore_index,
reduce, reduction, label_smoothing), the `weight` buffer, repr and state_dict are torch's;
only forward runs on minitorch_ext.nn.functional.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...ops import ce as _ce


class CrossEntropyLoss(nn.CrossEntropyLoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _ce.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                                 reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(nn.NLLLoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _ce.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                            reduction=self.reduction)


__all__ = ["CrossEntropyLoss", "NLLLoss"]
