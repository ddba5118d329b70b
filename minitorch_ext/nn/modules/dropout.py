"""Dropout modules: drop-ins for torch.nn.Dropout, Dropout1d and Dropout2d.

Each subclasses torch's module, so the constructor (and its p check), attributes,
repr and (empty) state_dict are torch's; forward runs on minitorch_ext's Philox
dropout (minitorch_ext.ops.dropout) and honours train()/eval().
"""
from __future__ import annotations

from torch import Tensor, nn

from ...ops import dropout as _D


class Dropout(nn.Dropout):
    def forward(self, input: Tensor) -> Tensor:
        return _D.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(nn.Dropout1d):
    def forward(self, input: Tensor) -> Tensor:
        return _D.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(nn.Dropout2d):
    def forward(self, input: Tensor) -> Tensor:
        return _D.dropout2d(input, self.p, self.training, self.inplace)


__all__ = ["Dropout", "Dropout1d", "Dropout2d"]
