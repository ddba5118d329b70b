"""Drop-in modules."""
from .attention import MultiheadAttention
from .activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .conv import Conv1d, Conv2d
from .linear import Linear
from .normalization import LayerNorm, RMSNorm

from .pooling import AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d
__all__ = ["LayerNorm", "RMSNorm", "Linear", "ReLU", "LeakyReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax",
           "LogSoftmax", "Conv1d", "Conv2d", "MultiheadAttention"]
__all__ += ["MaxPool2d", "MaxPool1d", "AvgPool2d", "AvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool1d"]
# ---- cross_entropy family ----
from .loss_ce import CrossEntropyLoss, NLLLoss
__all__ += ["CrossEntropyLoss", "NLLLoss"]
