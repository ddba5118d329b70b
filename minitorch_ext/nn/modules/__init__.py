"""Drop-in modules."""
from .normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
