"""Mirrors torch.nn.functional: the same names and signatures, on our kernels."""
from ..ops.attention import scaled_dot_product_attention
from ..ops.activation import (gelu, leaky_relu, leaky_relu_, log_softmax, relu, relu_, sigmoid, silu,
                              softmax, tanh)
from ..ops.conv import conv1d, conv2d
from ..ops.linear import linear, parse_activation
from ..ops.norm import layer_norm, rms_norm

from ..ops.pool import (adaptive_avg_pool1d, adaptive_avg_pool2d, avg_pool1d, avg_pool2d, max_pool1d,
                        max_pool2d)
__all__ = ["layer_norm", "rms_norm", "linear", "parse_activation", "relu", "relu_", "leaky_relu", "leaky_relu_",
           "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax",
           "scaled_dot_product_attention", "conv1d", "conv2d"]
__all__ += ["max_pool2d", "max_pool1d", "avg_pool2d", "avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool1d"]

from ..ops.bnorm import batch_norm, group_norm, instance_norm
__all__ += ["batch_norm", "group_norm", "instance_norm"]
# ---- pwloss family (pointwise losses) ----
from ..ops.pwloss import (binary_cross_entropy, binary_cross_entropy_with_logits, huber_loss, kl_div,  # noqa: E402
                          l1_loss, mse_loss, smooth_l1_loss)
__all__ += ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
            "binary_cross_entropy_with_logits", "kl_div"]
# dropout / embedding family
from ..ops.dropout import dropout, dropout1d, dropout2d  # noqa: E402
from ..ops.embedding import embedding  # noqa: E402
__all__ += ["dropout", "dropout1d", "dropout2d", "embedding"]
# ---- cross_entropy family ----
from ..ops.ce import cross_entropy, nll_loss
__all__ += ["cross_entropy", "nll_loss"]
