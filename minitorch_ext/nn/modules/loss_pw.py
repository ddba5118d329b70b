"""Pointwise loss modules: drop-ins for torch.nn.MSELoss, L1Loss, SmoothL1Loss, HuberLoss,
BCELoss, BCEWithLogitsLoss and KLDivLoss.

Each subclasses torch's module, so the constructor (size_average/reduce mapped to
`reduction` as torch does), attributes, repr and buffers are torch's: BCELoss registers
`weight`, BCEWithLogitsLoss `weight` and `pos_weight`, and state_dict keys match. Only
forward runs on minitorch_ext.nn.functional.
"""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F


class MSELoss(nn.MSELoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(nn.L1Loss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(nn.SmoothL1Loss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(nn.HuberLoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class BCELoss(nn.BCELoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class KLDivLoss(nn.KLDivLoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


__all__ = ["MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss", "BCEWithLogitsLoss", "KLDivLoss"]
