"""Test configuration.

* Without a GPU, Triton kernels run through Triton's interpreter; the variable
  must be set before triton is imported (kernels read it at decoration time),
  so it is set here, before any test module imports minitorch_ext.
* Under pytest-xdist each worker runs cpu_count // workers intra-op threads.
* Hypothesis profiles: `ci` (default; derandomized, few examples, no deadline)
  and `dev` (more examples): HYPOTHESIS_PROFILE=dev pytest ...
"""
import os

import torch

# pytest -n N: N worker processes share the machine's cores. Each worker gets its
# share of intra-op threads: 2 workers x 2 OpenMP threads on 2 cores made torch's
# and our parallel regions spin against each other (a 100-step optimizer test
# took 14x longer). Tests that compare 1 and 2 threads set the count themselves.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

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
