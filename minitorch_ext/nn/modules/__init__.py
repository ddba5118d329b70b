"""Drop-in modules."""
from .linear import Linear
from .normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm", "Linear"]
