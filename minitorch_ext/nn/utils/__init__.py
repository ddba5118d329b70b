"""Mirrors torch.nn.utils."""
