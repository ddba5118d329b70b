"""SimpleNet (tutorial 6.1): Linear -> ReLU -> Linear, with a LayerNorm (or
RMSNorm) on the hidden layer taken from minitorch_ext.nn."""
from __future__ import annotations

import torch

import minitorch_ext as mte


class SimpleNet(torch.nn.Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int, norm: str = "layer_norm",
                 nn=None):
        super().__init__()
        nn = nn or mte.nn
        self.fc1 = torch.nn.Linear(input_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size) if norm == "layer_norm" else nn.RMSNorm(hidden_size)
        self.relu = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.norm(self.fc1(x))))
