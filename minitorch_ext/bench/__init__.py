"""Benchmark harness: ``python -m minitorch_ext.bench FAMILY`` (see ``--help``).

The family registry. A family is a function ``fn(ctx) -> iterable of Case``
(``Case`` and ``Context`` live in ``minitorch_ext.bench.harness``); the harness
times ours against every native variant of each case, interleaved, and prints
the table. To add a family, write ``bench/<file>.py`` and add one line here:

    FAMILIES["adamw"] = "minitorch_ext.bench.optim:adamw"

Entries are ``"module:function"`` strings, resolved only when a family runs, so
importing this package (and ``--help``) never imports torch: the CPU allocator
reads THP_MEM_ALLOC_ENABLE when torch starts, and ``__main__`` must set it
first. A family defined elsewhere (a script, a notebook) can use the
decorator instead: ``@register("myop")``; it then runs through
``harness.run`` / ``harness.main`` in that process.
"""
from __future__ import annotations

import importlib
from typing import Callable

# family name -> "module:function" (or the function itself), in the order `all` runs them
FAMILIES: dict[str, str | Callable] = {
    "layernorm": "minitorch_ext.bench.norm:layernorm",
    "rmsnorm": "minitorch_ext.bench.norm:rmsnorm",
    "optim": "minitorch_ext.bench.optim:optim",
    "optim_clip": "minitorch_ext.bench.optim:optim_clip",
    "gemm": "minitorch_ext.bench.gemm:gemm",
    "linear": "minitorch_ext.bench.gemm:linear",
}
FAMILIES["activation"] = "minitorch_ext.bench.activation:activation"
FAMILIES["conv"] = "minitorch_ext.bench.conv:conv"
FAMILIES["attention"] = "minitorch_ext.bench.attention:attention"


def register(name: str):
    """Decorator: ``@register("myop")`` adds ``fn(ctx) -> Iterable[Case]`` as family ``name``."""

    def deco(fn):
        FAMILIES[name] = fn
        return fn

    return deco


def get_family(name: str) -> Callable:
    """The case generator of family ``name`` (imports its module on first use)."""
    try:
        entry = FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown benchmark family {name!r}; known: {', '.join(FAMILIES)}") from None
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        FAMILIES[name] = entry
    return entry


__all__ = ["FAMILIES", "register", "get_family"]
FAMILIES["pool"] = "minitorch_ext.bench.pool:pool"
FAMILIES["batchnorm"] = "minitorch_ext.bench.bnorm:batchnorm"

# ---- pwloss family (pointwise losses) ----
FAMILIES["pwloss"] = "minitorch_ext.bench.pwloss:pwloss"
# dropout / embedding family
FAMILIES["dropout"] = "minitorch_ext.bench.dropemb:dropout"
FAMILIES["embedding"] = "minitorch_ext.bench.dropemb:embedding"
# ---- cross_entropy family ----
FAMILIES["cross_entropy"] = "minitorch_ext.bench.ce:cross_entropy"
