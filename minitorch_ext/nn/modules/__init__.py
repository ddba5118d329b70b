"""Drop-in modules."""
from .normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
from .activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh  # noqa: E402

__all__ += ["ReLU", "LeakyReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax"]
