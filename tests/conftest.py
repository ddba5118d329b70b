"""Test configuration.

* Without a GPU, Triton kernels run through Triton's interpreter; the variable
  must be set before triton is imported (kernels read it at decoration time),
  so it is set here, before any test module imports minitorch_ext.
* Hypothesis profiles: `ci` (default; derandomized, few examples, no deadline)
  and `dev` (more examples): HYPOTHESIS_PROFILE=dev pytest ...
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, max_examples=20, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import minitorch_ext  # noqa: E402,F401
