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

from .batchnorm import BatchNorm1d, BatchNorm2d, GroupNorm, InstanceNorm1d, InstanceNorm2d
__all__ += ["BatchNorm1d", "BatchNorm2d", "InstanceNorm1d", "InstanceNorm2d", "GroupNorm"]
# ---- pwloss family (pointwise losses) ----
from .loss_pw import (BCELoss, BCEWithLogitsLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss,  # noqa: E402
                      SmoothL1Loss)
__all__ += ["MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss", "BCEWithLogitsLoss", "KLDivLoss"]
# dropout / embedding family
from .dropout import Dropout, Dropout1d, Dropout2d  # noqa: E402
from .sparse import Embedding  # noqa: E402
__all__ += ["Dropout", "Dropout1d", "Dropout2d", "Embedding"]
# ---- cross_entropy family ----
from .loss_ce import CrossEntropyLoss, NLLLoss
__all__ += ["CrossEntropyLoss", "NLLLoss"]
