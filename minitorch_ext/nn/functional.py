"""Mirrors torch.nn.functional: the same names and signatures, on our kernels."""
from ..ops.linear import linear, parse_activation
from ..ops.norm import layer_norm, rms_norm

__all__ = ["layer_norm", "rms_norm", "linear", "parse_activation"]
