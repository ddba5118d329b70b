"""Drop-in modules: same constructors, parameter names and state_dict keys as torch.nn."""
from . import functional  # noqa: F401
from . import utils  # noqa: F401
from .modules import *  # noqa: F401,F403
from .modules import __all__  # noqa: F401
