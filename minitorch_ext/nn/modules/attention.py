"""MultiheadAttention: drop-in for torch.nn.MultiheadAttention, on our kernels.

A subclass of torch.nn.MultiheadAttention: the constructor (embed_dim, num_heads,
dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first, device,
dtype), the parameters (`in_proj_weight`, or `q_proj_weight`/`k_proj_weight`/
`v_proj_weight` when kdim/vdim differ from embed_dim; `in_proj_bias`, `bias_k`,
`bias_v`, `out_proj`), their initialisation (torch's own `__init__` runs, so the
same seed gives the same weights), the state_dict keys and `isinstance` are
torch's. Only `forward` is ours, with torch's signature and conventions:

* in-projection and out-projection through minitorch_ext's Linear kernels
  (self-attention: one GEMM on the packed in_proj_weight, q/k/v are column
  slices of its output, viewed as heads without a copy; batch_first inputs
  are projected in their own layout);
* attention through our fused kernels (minitorch_ext.ops.attention) on the
  [N, H, L, head_dim] views;
* masks as torch's MultiheadAttention reads them: a bool key_padding_mask /
  attn_mask is True where a position is *masked out* (the opposite of sdpa's),
  a float one is added; both are merged into one mask (bool with bool stays
  bool, anything with a float mask becomes additive) that reaches the kernel
  as a broadcast view; attn_mask [L, S] or [N * num_heads, L, S];
* add_bias_kv, add_zero_attn, unbatched inputs (2-D query), is_causal (torch's
  hint semantics: with no key_padding_mask and need_weights=False the kernel
  applies the causal rule itself and attn_mask is not read);
* dropout on the attention probabilities only in training (`self.dropout`);
* need_weights=True: the weights come from our attention_weights kernel (P from
  the forward's logsumexp; a second pass over the scores, O(L) extra memory
  beyond the returned [N, H, L, S]), averaged over heads when
  average_attn_weights. Differences from torch, by design: the weights are the
  probabilities *before* dropout (torch returns them after its dropout), they
  carry no gradient (the weights op has no backward; the attention output
  does), and a fully masked row gives weights 0, not NaN.

torch's TransformerEncoderLayer has an inference fast path
(torch._transformer_encoder_layer_fwd) that reads self_attn's weights and never
calls self_attn.forward. One of its conditions is that no module in the layer
has forward hooks, so this module registers a no-op forward pre-hook
(`_uses_minitorch_ext_kernels`): a layer holding ours always takes the
ordinary path, which calls our forward. torch's TransformerEncoder stack may
still pack its input as a NestedTensor in eval with a src_key_padding_mask;
our forward unpacks it to the padded batch and a key padding mask, and packs
the result the same way.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from ...ops.attention import attention_4d, attention_with_weights
from ...ops.linear import linear


def _uses_minitorch_ext_kernels(module, args):
    """Forward pre-hook (a no-op): its presence turns off torch's TransformerEncoderLayer fast path,
    which would run native attention on this module's weights without calling its forward."""
    return None


def _check_mask_dtype(mask: Optional[Tensor], name: str) -> None:
    if mask is not None and mask.dtype != torch.bool and not torch.is_floating_point(mask):
        raise AssertionError(f"only bool and floating types of {name} are supported")


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """torch's canonical mask: bool True (masked out) -> -inf, float as given (in `dtype`)."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttention(nn.MultiheadAttention):
    __doc__ = nn.MultiheadAttention.__doc__

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, add_bias_kv=add_bias_kv,
                         add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=batch_first,
                         device=device, dtype=dtype)
        self.register_forward_pre_hook(_uses_minitorch_ext_kernels)

    def __setstate__(self, state):
        super().__setstate__(state)
        if not any(h is _uses_minitorch_ext_kernels for h in self._forward_pre_hooks.values()):
            self.register_forward_pre_hook(_uses_minitorch_ext_kernels)

    # ------------------------------------------------------------------ forward

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        if query.is_nested or key.is_nested or value.is_nested:
            return self._forward_nested(query, key, value, key_padding_mask, need_weights, attn_mask,
                                        average_attn_weights, is_causal)
        E, H = self.embed_dim, self.num_heads
        hd = self.head_dim
        is_batched = TF._mha_shape_check(query, key, value, key_padding_mask, attn_mask, H)
        bf = self.batch_first and is_batched
        self_attn = query is key and key is value
        kv_same = key is value
        if not is_batched:
            # the batch dim goes where a batched input has it (dim 1, seq-first: torch's own convention)
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if bf:
            N, L, Eq = query.shape
            S = key.shape[1]
        else:
            L, N, Eq = query.shape
            S = key.shape[0]
        if Eq != E:
            raise AssertionError(f"was expecting embedding dimension of {E}, but got {Eq}")
        if self._qkv_same_embed_dim:
            if key.shape != value.shape:
                raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")
        elif key.shape[:2] != value.shape[:2]:
            raise AssertionError(f"key's sequence and batch dims {key.shape[:2]} do not match value's "
                                 f"{value.shape[:2]}")
        _check_mask_dtype(key_padding_mask, "key_padding_mask")
        _check_mask_dtype(attn_mask, "attn_mask")

        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                               "module method `generate_square_subsequent_mask` to create this mask.")
        causal = False
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None      # torch's hint: the kernel applies the causal rule itself
            causal = True
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (L, S):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(L, S)}.")
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (N * H, L, S):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(N * H, L, S)}.")
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")

        # ---- in-projection (our Linear); outputs keep the inputs' layout ([N, L, *] or [L, N, *])
        if self._qkv_same_embed_dim:
            w, b = self.in_proj_weight, self.in_proj_bias
            if self_attn:
                qkv = linear(query, w, b)
                q, k, v = qkv[..., :E], qkv[..., E:2 * E], qkv[..., 2 * E:]
            elif kv_same:
                q = linear(query, w[:E], b[:E] if b is not None else None)
                kv = linear(key, w[E:], b[E:] if b is not None else None)
                k, v = kv[..., :E], kv[..., E:]
            else:
                bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
                q = linear(query, w[:E], bq)
                k = linear(key, w[E:2 * E], bk)
                v = linear(value, w[2 * E:], bv)
        else:
            bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
            q = linear(query, self.q_proj_weight, bq)
            k = linear(key, self.k_proj_weight, bk)
            v = linear(value, self.v_proj_weight, bv)

        seq_dim = 1 if bf else 0
        if self.bias_k is not None and self.bias_v is not None:
            shape = (N, 1, E) if bf else (1, N, E)
            k = torch.cat([k, self.bias_k.expand(shape)], dim=seq_dim)
            v = torch.cat([v, self.bias_v.expand(shape)], dim=seq_dim)
            attn_mask = TF.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = TF.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        elif self.bias_k is not None or self.bias_v is not None:
            raise AssertionError("bias_k and bias_v must both be set or both be None")

        def heads(t: Tensor) -> Tensor:          # -> [N, H, len, hd], a view
            if bf:
                return t.view(N, t.shape[1], H, hd).transpose(1, 2)
            return t.view(t.shape[0], N, H, hd).permute(1, 2, 0, 3)

        q4, k4, v4 = heads(q), heads(k), heads(v)
        if self.add_zero_attn:
            z = k4.new_zeros((N, H, 1, hd))
            k4 = torch.cat([k4, z], dim=2)
            v4 = torch.cat([v4, z], dim=2)
            attn_mask = TF.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = TF.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        S = k4.shape[2]
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (N, S):
            raise AssertionError(f"expecting key_padding_mask shape of {(N, S)}, but got "
                                 f"{key_padding_mask.shape}")

        # ---- merge the masks into one [N, H, L, S] view for the kernel (bool: True = takes part)
        am = None
        if attn_mask is not None:
            am = attn_mask.view(N, H, L, S) if attn_mask.dim() == 3 else attn_mask
        kp = key_padding_mask.view(N, 1, 1, S) if key_padding_mask is not None else None
        mask = None
        if am is not None or kp is not None:
            parts = [m for m in (am, kp) if m is not None]
            if all(m.dtype == torch.bool for m in parts):
                masked = parts[0] if len(parts) == 1 else parts[0] | parts[1]
                mask = ~masked
            else:
                mask = _additive(parts[0], q4.dtype)
                if len(parts) == 2:
                    mask = mask + _additive(parts[1], q4.dtype)
            mask = mask.expand(N, H, L, S)

        p = self.dropout if self.training else 0.0
        scale = 1.0 / math.sqrt(hd)
        if need_weights:
            out4, weights = attention_with_weights(q4, k4, v4, mask, p, causal, scale)
        else:
            out4, weights = attention_4d(q4, k4, v4, mask, p, causal, scale), None

        out = out4.transpose(1, 2).reshape(N, L, E) if bf else out4.permute(2, 0, 1, 3).reshape(L, N, E)
        out = linear(out, self.out_proj.weight, self.out_proj.bias)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        return out, weights

    def _forward_nested(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                        is_causal):
        # torch's TransformerEncoder (eval, src_key_padding_mask, batch_first) packs its input as a
        # NestedTensor of left-aligned sequences: unpack to the padded batch + a key padding mask
        if not (query is key and key is value and query.is_nested and self.batch_first):
            raise RuntimeError("minitorch_ext.nn.MultiheadAttention: NestedTensor inputs are supported only for "
                               "batch_first self-attention (query is key is value), as torch's TransformerEncoder "
                               "passes them")
        lengths = [t.shape[0] for t in query.unbind()]
        padded = query.to_padded_tensor(0.0)
        S = padded.shape[1]
        pad = torch.arange(S, device=padded.device)[None, :] >= torch.tensor(lengths, device=padded.device)[:, None]
        if key_padding_mask is not None and key_padding_mask.shape == pad.shape:
            pad = pad | (key_padding_mask.bool() if key_padding_mask.dtype == torch.bool
                         else torch.isneginf(key_padding_mask))
        out, w = self.forward(padded, padded, padded, pad, need_weights, attn_mask, average_attn_weights, is_causal)
        return torch._nested_tensor_from_mask(out, ~pad, mask_check=False), w
