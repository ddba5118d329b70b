"""Each op family's sample inputs, bad inputs and raw ops, as `minitorch_ext.testing.OpSpec`s.

The test suite and `python -m minitorch_ext parity` both read them, so one
description drives every check. FAMILIES maps a family to its specs.
"""
from . import activation, attention, conv, linear, norm, pool

FAMILIES = {
    "norm": lambda: [norm.spec("layer_norm"), norm.spec("rms_norm")],
    "linear": lambda: [linear.spec()],
    "activation": lambda: [activation.spec("activation"), activation.spec("softmax")],
    "attention": lambda: [attention.spec()],
    "conv": lambda: [conv.spec()],
    "pool": lambda: [pool.spec()],
}


# ---- pwloss family (pointwise losses) ----
from . import pwloss  # noqa: E402

FAMILIES["pwloss"] = lambda: [pwloss.spec()]
