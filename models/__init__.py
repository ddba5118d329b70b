"""The tutorial's models, rebuilt on minitorch_ext.nn (installed as minitorch_ext.models).

Each takes `nn=` (default: minitorch_ext.nn) so the same code builds the
native-torch twin: `SimpleNet(..., nn=torch.nn)`, whose state_dict loads into ours.
"""
from .mlp import SimpleNet

__all__ = ["SimpleNet"]
