"""Drop-in optimizers on fused multi-tensor step kernels (see issue: optimizer steps)."""
