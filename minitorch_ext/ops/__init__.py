"""Python side of every registered op: fake (meta) kernels, autograd, Triton ops.

Importing a family module registers it; the raw ops are torch.ops.minitorch_ext.*.
"""
from . import norm  # noqa: F401
from . import optim  # noqa: F401
from . import linear  # noqa: F401
from . import activation  # noqa: F401
from . import attention  # noqa: F401
from . import conv  # noqa: F401
from . import pool  # noqa: F401
from . import bnorm  # noqa: F401

# ---- pwloss family (pointwise losses) ----
from . import pwloss  # noqa: F401,E402
# dropout / embedding family
from . import dropout  # noqa: F401,E402
from . import embedding  # noqa: F401,E402
# ---- cross_entropy family ----
from . import ce  # noqa: F401
