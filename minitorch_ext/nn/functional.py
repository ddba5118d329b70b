"""Mirrors torch.nn.functional: the same names and signatures, on our kernels."""
from ..ops.norm import layer_norm, rms_norm

__all__ = ["layer_norm", "rms_norm"]
from ..ops.activation import (gelu, leaky_relu, leaky_relu_, log_softmax, relu, relu_, sigmoid, silu,  # noqa: E402
                              softmax, tanh)

__all__ += ["relu", "relu_", "leaky_relu", "leaky_relu_", "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax"]
