"""Attention family, Python side: fake kernels, autograd, the Triton ops, the public functional.

Registered ops (schemas and the exact kernel contract in csrc/ops.cpp; below for Triton):

    torch.ops.minitorch_ext.attention_fwd / attention_bwd / attention_weights      C++ (CPU), CUDA
    torch.ops.minitorch_ext.attention_fwd_triton / _bwd_triton / _weights_triton    Triton

The kernels see one normalized layout: query [B, Hq, Lq, D], key [B, Hkv, Lk, D],
value [B, Hkv, Lk, Dv] with any strides, Hq % Hkv == 0, and a mask that is None or
a [B, Hq, Lq, Lk] view (broadcast dims have stride 0: never materialised), bool
(True = takes part) or additive in query's dtype. `scaled_dot_product_attention`
below maps torch's arguments onto it:

* leading batch dims: 2-D inputs are one head of one batch; 3-D inputs are
  [heads, L, D] of one batch (dim -3 is the head dim, as torch's GQA reads it);
  4-D is the kernels' own layout; more dims are flattened into B (a view where
  the strides allow, which they do for contiguous and transposed inputs).
  Batch dims broadcast between query, key and value as torch's math does, by
  expand() (stride 0), never by a copy;
* GQA (enable_gqa=True): query head h reads key/value head h // (Hq // Hkv);
  K/V are never repeated per query head. Without enable_gqa the head dims must
  match or broadcast (a single key/value head is MQA by broadcasting);
* the key and value lengths must agree (torch's fused CPU kernel does not
  check this; its math path fails later with a bmm message: we say which);
* scale None -> 1/sqrt(D); any float is taken as given (also <= 0, with causal);
* dropout (dropout_p > 0; the functional has no training flag, as torch's):
  one int64 seed per call, drawn from torch's default CPU generator (so
  torch.manual_seed makes a run repeatable; dropout_p <= 0 draws nothing).
  The CPU generator also serves CUDA tensors: a draw from the CUDA generator
  would need a device sync (.item()) on every call; torch.manual_seed seeds
  both. The kernels regenerate the mask from (seed, element index) with
  Philox4x32-10 (minitorch_ext._philox is the NumPy reference);
* autocast: torch runs sdpa in the lower precision on CPU and CUDA. The casts
  happen here, on the user's tensors (a float mask is cast at its own size,
  before it is expanded), and the ops carry the same policy for direct callers.

Autograd: `register_autograd` on each forward op; backward calls the matching
bwd op with output_mask from ctx.needs_input_grad. The mask's gradient comes
back at [B, Hq, Lq, Lk] and autograd's expand/reshape backward sums it down to
the user's mask shape. Under no_grad / inference_mode nothing is saved.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from ._registry import register_autocast_policy, triton_custom_op

_OPS = torch.ops.minitorch_ext
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _c10(dtype: torch.dtype) -> str:
    return {torch.float32: "float", torch.float64: "double", torch.bfloat16: "c10::BFloat16",
            torch.float16: "c10::Half", torch.int64: "long int", torch.int32: "int", torch.bool: "bool",
            torch.int8: "signed char", torch.uint8: "unsigned char", torch.int16: "short int"}.get(
        dtype, str(dtype).replace("torch.", ""))


# ---------------------------------------------------------------------------
# fake (meta) kernels: shapes and dtypes only, used by opcheck, torch.compile and meta tensors
# ---------------------------------------------------------------------------

def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_layout(query, key, value, attn_mask):
    torch._check(query.dim() == 4 and key.dim() == 4 and value.dim() == 4,
                 lambda: f"attention: query, key and value must be 4-D [B, H, L, D], got {query.dim()}-D, "
                         f"{key.dim()}-D and {value.dim()}-D")
    B, Hq, Lq, D = query.shape
    torch._check(key.shape[0] == B and value.shape[0] == B and key.shape[1] == value.shape[1]
                 and key.shape[2] == value.shape[2] and key.shape[3] == D,
                 lambda: f"attention: key {list(key.shape)} and value {list(value.shape)} do not fit query "
                         f"{list(query.shape)}")
    torch._check(key.shape[1] > 0 and Hq % key.shape[1] == 0,
                 lambda: f"attention: query heads ({Hq}) must be a multiple of key/value heads ({key.shape[1]})")
    if attn_mask is not None:
        torch._check(tuple(attn_mask.shape) == (B, Hq, Lq, key.shape[2]),
                     lambda: f"attention: attn_mask must be [B, Hq, Lq, Lk] = {[B, Hq, Lq, key.shape[2]]}, "
                             f"got {list(attn_mask.shape)}")


def _fake_fwd(query, key, value, attn_mask, dropout_p, is_causal, scale, seed):
    _check_layout(query, key, value, attn_mask)
    B, Hq, Lq, _ = query.shape
    out = query.new_empty((B, Hq, Lq, value.shape[3]))
    lse = query.new_empty((B, Hq, Lq), dtype=_lse_dtype(query.dtype))
    return out, lse


def _fake_bwd(grad_output, query, key, value, output, logsumexp, attn_mask, dropout_p, is_causal, scale, seed,
              output_mask):
    e = query.new_empty((0,))
    B, Hq, Lq, _ = query.shape
    gq = query.new_empty(query.shape) if output_mask[0] else e
    gk = key.new_empty(key.shape) if output_mask[1] else query.new_empty((0,))
    gv = value.new_empty(value.shape) if output_mask[2] else query.new_empty((0,))
    gm = query.new_empty((B, Hq, Lq, key.shape[2])) if output_mask[3] else query.new_empty((0,))
    return gq, gk, gv, gm


def _fake_weights(query, key, attn_mask, is_causal, scale, logsumexp):
    B, Hq, Lq, _ = query.shape
    return query.new_empty((B, Hq, Lq, key.shape[2]))


torch.library.register_fake("minitorch_ext::attention_fwd")(_fake_fwd)
torch.library.register_fake("minitorch_ext::attention_bwd")(_fake_bwd)
torch.library.register_fake("minitorch_ext::attention_weights")(_fake_weights)


# ---------------------------------------------------------------------------
# Triton ops: minitorch_ext.kernels.attention behind the same schemas
# ---------------------------------------------------------------------------

def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return t if t is not None else like.new_empty((0,))


@triton_custom_op("minitorch_ext::attention_fwd_triton", mutates_args=(), fake=_fake_fwd)
def _attention_fwd_triton(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor],
                          dropout_p: float, is_causal: bool, scale: float, seed: int) -> Tuple[Tensor, Tensor]:
    from minitorch_ext.kernels import attention as K

    out, lse = K.attention_fwd(query, key, value, attn_mask, dropout_p, is_causal, scale, seed)
    return out, lse


@triton_custom_op("minitorch_ext::attention_bwd_triton", mutates_args=(), fake=_fake_bwd)
def _attention_bwd_triton(grad_output: Tensor, query: Tensor, key: Tensor, value: Tensor, output: Tensor,
                          logsumexp: Tensor, attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool,
                          scale: float, seed: int, output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import attention as K

    res = K.attention_bwd(grad_output, query, key, value, output, logsumexp, attn_mask, dropout_p, is_causal,
                          scale, seed, [bool(m) for m in output_mask])
    gq, gk, gv, gm = (_or_empty(t, query) if m else query.new_empty((0,)) for t, m in zip(res, output_mask))
    return gq, gk, gv, gm


@triton_custom_op("minitorch_ext::attention_weights_triton", mutates_args=(), fake=_fake_weights)
def _attention_weights_triton(query: Tensor, key: Tensor, attn_mask: Optional[Tensor], is_causal: bool,
                              scale: float, logsumexp: Tensor) -> Tensor:
    from minitorch_ext.kernels import attention as K

    return K.attention_weights(query, key, attn_mask, is_causal, scale, logsumexp)


# ---------------------------------------------------------------------------
# autograd: one wiring per forward op, the backward op of the same backend
# ---------------------------------------------------------------------------

def _wire_attention(fwd: str, bwd):
    def setup_context(ctx, inputs, output):
        query, key, value, attn_mask, dropout_p, is_causal, scale, seed = inputs
        out, lse = output
        ctx.save_for_backward(query, key, value, out, lse, attn_mask)
        ctx.dropout_p, ctx.is_causal, ctx.scale, ctx.seed = dropout_p, is_causal, scale, seed
        ctx.mark_non_differentiable(lse)

    def backward(ctx, grad_out, _grad_lse):
        query, key, value, out, lse, attn_mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [bool(need[0]), bool(need[1]), bool(need[2]),
                bool(need[3]) and attn_mask is not None and attn_mask.is_floating_point()]
        gq, gk, gv, gm = bwd()(grad_out.contiguous(), query, key, value, out, lse, attn_mask, ctx.dropout_p,
                               ctx.is_causal, ctx.scale, ctx.seed, mask)
        return (gq if mask[0] else None, gk if mask[1] else None, gv if mask[2] else None,
                gm if mask[3] else None, None, None, None, None)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


_wire_attention("minitorch_ext::attention_fwd", lambda: _OPS.attention_bwd)
_wire_attention("minitorch_ext::attention_fwd_triton", lambda: _OPS.attention_bwd_triton)

# torch's autocast runs scaled_dot_product_attention in the lower precision on both devices
for _name in ("attention_fwd", "attention_fwd_triton", "attention_weights", "attention_weights_triton"):
    register_autocast_policy(f"minitorch_ext::{_name}", cpu="lower", cuda="lower")


# ---------------------------------------------------------------------------
# argument checks and the mapping onto the kernels' layout
# ---------------------------------------------------------------------------

_FN = "scaled_dot_product_attention()"


def _check_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> None:
    for pos, (name, t) in enumerate((("query", query), ("key", key), ("value", value)), 1):
        if not isinstance(t, Tensor):
            raise TypeError(f"{_FN}: argument '{name}' (position {pos}) must be Tensor, not {type(t).__name__}")
    if attn_mask is not None and not isinstance(attn_mask, Tensor):
        raise TypeError(f"{_FN}: argument 'attn_mask' (position 4) must be Tensor, not {type(attn_mask).__name__}")
    if not isinstance(dropout_p, numbers.Real) or isinstance(dropout_p, bool):
        raise TypeError(f"{_FN}: argument 'dropout_p' (position 5) must be float, not {type(dropout_p).__name__}")
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"{_FN}: argument 'scale' must be float, not {type(scale).__name__}")
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise RuntimeError(f"Expected query, key, and value to all be  at least 2 dimensional, but got query.dim: "
                           f"{query.dim()} key.dim: {key.dim()} and value.dim: {value.dim()} instead.")
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(f"Expected query, key, and value to have the same dtype, but got query.dtype: "
                           f"{_c10(query.dtype)} key.dtype: {_c10(key.dtype)} and value.dtype: {_c10(value.dtype)} "
                           f"instead.")
    if not (query.device == key.device == value.device):
        raise RuntimeError(f"Expected query, key, and value to have the same device type, but got query.device: "
                           f"{query.device} key.device: {key.device} and value.device: {value.device} instead.")
    if query.dtype not in _FLOATS:
        raise RuntimeError(f"{_FN}: query: expected a floating point tensor (float32, float64, bfloat16, "
                           f"float16), got dtype {query.dtype}")
    if query.shape[-1] != key.shape[-1]:
        raise RuntimeError(f"{_FN}: query and key must have the same head dim (the last dim), got query "
                           f"{list(query.shape)} and key {list(key.shape)}")
    if key.shape[-2] != value.shape[-2]:
        raise RuntimeError(f"{_FN}: key and value must have the same length (dim -2), got key {list(key.shape)} "
                           f"and value {list(value.shape)}")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point() or \
                attn_mask.is_floating_point() and attn_mask.dtype not in (query.dtype, torch.float32):
            raise RuntimeError(f"Expected attn_mask dtype to be bool or float or to match query dtype, but got "
                               f"attn_mask.dtype: {_c10(attn_mask.dtype)} and  query.dtype: {_c10(query.dtype)} "
                               f"instead.")
        if attn_mask.device != query.device:
            raise RuntimeError(f"{_FN}: attn_mask: expected all tensors to be on the same device, but attn_mask is "
                               f"on {attn_mask.device} and query on {query.device}")
        if is_causal:
            raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be set when "
                               "is_causal=True")
        if attn_mask.dim() < 2:  # torch 2.14 indexes the mask's dim -2 (IndexError), whatever the shapes
            raise IndexError(f"Dimension out of range (expected to be in range of [{-max(attn_mask.dim(), 1)}, "
                             f"{max(attn_mask.dim(), 1) - 1}], but got -2): {_FN}: attn_mask must have at least 2 "
                             f"dims, got shape {list(attn_mask.shape)}")
    if dropout_p > 1.0:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {float(dropout_p)}")


def _heads(t: Tensor) -> int:
    return t.shape[-3] if t.dim() >= 3 else 1


def _batch(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape[:-3]) if t.dim() >= 3 else ()


def _to_4d(t: Tensor, batch: Tuple[int, ...], heads: int) -> Tensor:
    """[*batch', heads', L, D] (batch' broadcastable to batch) -> [B, heads, L, D]: expand (stride 0) then
    flatten the batch dims into one (a view where the strides allow)."""
    while t.dim() < 3:
        t = t.unsqueeze(0)
    t = t.expand(*batch, heads, t.shape[-2], t.shape[-1])
    if len(batch) == 1:
        return t
    if len(batch) == 0:
        return t.unsqueeze(0)
    return t.reshape(math.prod(batch), heads, t.shape[-2], t.shape[-1])


def _broadcast(shapes, what: str) -> Tuple[int, ...]:
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        raise RuntimeError(f"{_FN}: {what} {', '.join(str(list(s)) for s in shapes)} are not broadcastable") \
            from None


def draw_seed(device) -> int:
    """One draw from torch's default CPU generator: the dropout seed of one attention call."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64).item())


def _autocast_dtype(query: Tensor) -> Optional[torch.dtype]:
    dev = query.device.type
    if dev not in ("cpu", "cuda") or query.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    try:
        on = torch.is_autocast_enabled(dev)
    except TypeError:  # older signature
        on = torch.is_autocast_cpu_enabled() if dev == "cpu" else torch.is_autocast_enabled()
    return torch.get_autocast_dtype(dev) if on else None


def _fwd_op(device):
    return _OPS.attention_fwd_triton if _backend.resolve(device) == "triton" else _OPS.attention_fwd


def _weights_op(device):
    return _OPS.attention_weights_triton if _backend.resolve(device) == "triton" else _OPS.attention_weights


def prepare(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
            dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
            enable_gqa: bool = False):
    """torch's sdpa arguments -> the kernels' (q, k, v, mask, dropout_p, is_causal, scale) in the 4-D
    layout, and the output shape. Checks everything; draws nothing."""
    _check_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    ac = _autocast_dtype(query)
    if ac is not None:
        query, key, value = query.to(ac), key.to(ac), value.to(ac)
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(ac)
    Lq, D = query.shape[-2], query.shape[-1]
    Lk, Dv = key.shape[-2], value.shape[-1]
    if enable_gqa:
        hq, hk, hv = _heads(query), _heads(key), _heads(value)
        if hk == 0 or hv == 0 or hq % hk or hq % hv:
            raise RuntimeError(f"Number of heads in key and value must divide the number of heads in query: "
                               f"query has {hq} heads, key {hk} and value {hv} (query {list(query.shape)}, key "
                               f"{list(key.shape)}, value {list(value.shape)})")
        if hk != hv:
            raise RuntimeError(f"{_FN}: with enable_gqa, key and value must have the same number of heads, got "
                               f"key {list(key.shape)} and value {list(value.shape)}")
        batch = _broadcast([_batch(query), _batch(key), _batch(value)], "the batch dims of query, key and value")
        Hq, Hkv = hq, hk
        out_shape = (*batch, Hq, Lq, Dv) if max(query.dim(), key.dim(), value.dim()) >= 3 else (Lq, Dv)
    else:
        full = _broadcast([query.shape[:-2], key.shape[:-2], value.shape[:-2]],
                          "the batch and head dims of query, key and value")
        out_shape = (*full, Lq, Dv)
        batch, Hq = (full[:-1], full[-1]) if full else ((), 1)
        # one key/value head for every query head: MQA by broadcasting, nothing expanded per head
        Hkv = 1 if (_heads(key) == 1 and _heads(value) == 1) else Hq
    q4 = _to_4d(query, batch, Hq)
    k4 = _to_4d(key, batch, Hkv)
    v4 = _to_4d(value, batch, Hkv)
    m4 = None
    if attn_mask is not None:
        target = (*batch, Hq, Lq, Lk)
        if attn_mask.dim() > len(target) or any(
                s != 1 and s != t for s, t in zip(reversed(attn_mask.shape), reversed(target))):
            raise RuntimeError(f"{_FN}: attn_mask of shape {list(attn_mask.shape)} is not broadcastable to "
                               f"{list(target)} (the attention's [..., Lq={Lq}, Lk={Lk}])")
        m = attn_mask.to(query.dtype) if attn_mask.is_floating_point() and attn_mask.dtype != query.dtype \
            else attn_mask
        m = m.expand(target)
        m4 = m if len(batch) == 1 else (m.unsqueeze(0) if not batch else
                                        m.reshape(math.prod(batch), Hq, Lq, Lk))
    scale = (1.0 / math.sqrt(D) if D > 0 else 1.0) if scale is None else float(scale)
    p = float(dropout_p) if dropout_p > 0 else 0.0
    return q4, k4, v4, m4, p, bool(is_causal), scale, out_shape


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """Same as torch.nn.functional.scaled_dot_product_attention, on our fused (FlashAttention-2) kernels:
    softmax(Q K^T * scale + mask) V without the Lq x Lk matrix, forward and backward.

    query [..., Hq, Lq, D], key [..., Hkv, Lk, D], value [..., Hkv, Lk, Dv] (2-D and more; batch dims
    broadcast); attn_mask bool (True = takes part) or additive, broadcastable to [..., Hq, Lq, Lk];
    is_causal: query i sees keys j <= i (top-left aligned); dropout whenever dropout_p > 0 (seeded from
    torch's default generator, one draw per call); scale None = 1/sqrt(D); enable_gqa: Hq a multiple of Hkv.
    A row with no key left (all masked, or Lk == 0) gives 0 and zero gradients."""
    q, k, v, m, p, causal, scale, out_shape = prepare(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                                      enable_gqa)
    seed = draw_seed(q.device) if p > 0 else 0
    out = _fwd_op(q.device)(q, k, v, m, p, causal, scale, seed)[0]
    return out.view(out_shape)


def attention_with_weights(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], dropout_p: float,
                           is_causal: bool, scale: float) -> Tuple[Tensor, Tensor]:
    """The kernels' 4-D layout: (output, P) where P = softmax(scale Q K^T + mask) without dropout, written
    by the attention_weights op from the forward's logsumexp (MultiheadAttention's need_weights=True).
    P carries no gradient (the op has no backward); the output does."""
    seed = draw_seed(q.device) if dropout_p > 0 else 0
    out, lse = _fwd_op(q.device)(q, k, v, mask, dropout_p, is_causal, scale, seed)
    with torch.no_grad():
        w = _weights_op(q.device)(q, k, mask, is_causal, scale, lse)
    return out, w


def attention_4d(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], dropout_p: float, is_causal: bool,
                 scale: float) -> Tensor:
    """The forward op on the kernels' own 4-D layout (no argument mapping), with autograd."""
    seed = draw_seed(q.device) if dropout_p > 0 else 0
    return _fwd_op(q.device)(q, k, v, mask, dropout_p, is_causal, scale, seed)[0]
