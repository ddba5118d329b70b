"""Linear: drop-in for torch.nn.Linear, on our GEMM.

Same constructor, parameters (`weight` [out_features, in_features], `bias`),
state_dict keys, initialisation and repr: under the same `torch.manual_seed`
a model built on ours starts from the very weights torch's would (the same
kaiming-uniform and uniform draws, in the same order). One extra keyword,
``activation=`` (see minitorch_ext.nn.functional.linear), fuses an activation
into the GEMM's epilogue; it shows in the repr only when set.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import functional as F


class Linear(nn.Module):
    __constants__ = ["in_features", "out_features"]
    in_features: int
    out_features: int
    weight: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 *, activation=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory_kwargs))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        F.parse_activation(activation)  # refuse a bad name at construction
        self.activation = activation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch.nn.Linear.reset_parameters, draw for draw
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias, activation=self.activation)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return s if self.activation is None else f"{s}, activation={self.activation!r}"
