"""Drop-in optimizers on fused multi-tensor step kernels.

    opt = minitorch_ext.optim.AdamW(model.parameters(), lr=1e-3)   # == torch.optim.AdamW

SGD, Adam, AdamW, RMSprop and Adagrad subclass torch's own classes (so isinstance checks, LR
schedulers, GradScaler and state_dicts work unchanged) and replace only
step(): one fused kernel call per param group and device.
"""
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]

