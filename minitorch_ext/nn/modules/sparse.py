"""Embedding: a drop-in for torch.nn.Embedding.

It subclasses torch's module, so the constructor (num_embeddings, embedding_dim,
padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, _weight, _freeze, device,
dtype), the initialisation under a seed (N(0, 1), the padding row zeroed), the
parameter name, state_dict keys, repr and ``from_pretrained`` are torch's; forward runs
on minitorch_ext.nn.functional.embedding (sparse=True is refused there).
"""
from __future__ import annotations

from torch import Tensor, nn

from ...ops.embedding import embedding


class Embedding(nn.Embedding):
    def forward(self, input: Tensor) -> Tensor:
        return embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                         self.scale_grad_by_freq, self.sparse)


__all__ = ["Embedding"]
