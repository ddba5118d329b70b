"""Mirrors torch.nn.functional names."""
