"""minitorch_ext.nn.MultiheadAttention against torch.nn.MultiheadAttention from the same seed: outputs,
every gradient and the weights over the constructor options and mask kinds; state_dict both ways;
dropped into torch's TransformerEncoder/Decoder (train and eval, norm_first either way), where a
dispatch trace shows our kernels ran and torch's fast path did not."""
import copy
import itertools
import pickle
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import minitorch_ext as mte
from minitorch_ext import testing

OPTIONS = [
    {},
    {"batch_first": True},
    {"bias": False},
    {"add_bias_kv": True},
    {"add_zero_attn": True, "batch_first": True},
    {"kdim": 5, "vdim": 3},
    {"kdim": 5, "vdim": 3, "batch_first": True, "add_bias_kv": True},
    {"add_bias_kv": True, "add_zero_attn": True, "bias": False},
]
MASKS = ["none", "kpm", "am", "kpm+am", "float kpm+am", "float am", "am3d", "float kpm"]


def _pair(kw, E=8, H=2):
    torch.manual_seed(1)
    nat = torch.nn.MultiheadAttention(E, H, **kw)
    torch.manual_seed(1)
    ours = mte.nn.MultiheadAttention(E, H, **kw)
    return nat, ours


def _inputs(kw, self_attn, masks, batched, E=8, H=2, N=3, L=5, S=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    bf = kw.get("batch_first", False)
    kd, vd = kw.get("kdim") or E, kw.get("vdim") or E

    def mk(length, e):
        shape = ((N, length, e) if bf else (length, N, e)) if batched else (length, e)
        return torch.randn(shape, generator=g, dtype=dtype).requires_grad_(True)

    if self_attn:
        q = k = v = mk(L, E)
        S = L
    else:
        q, k, v = mk(L, E), mk(S, kd), mk(S, vd)
    kpm = am = None
    if "kpm" in masks:
        kpm = torch.zeros(N, S, dtype=torch.bool)
        kpm[:, -1] = True
        kpm[0, 1] = True
        if "float" in masks:
            kpm = torch.zeros(N, S, dtype=dtype).masked_fill(kpm, -1e9)
        if not batched:
            kpm = kpm[0]
    if "am" in masks:
        shape = (N * H if batched else H, L, S) if "am3d" in masks else (L, S)
        am = torch.rand(shape, generator=g) > 0.7
        am[..., 0] = False                    # every row keeps a key (torch's weights would be NaN there)
        if "float" in masks:
            am = torch.randn(shape, generator=g, dtype=dtype)
    return q, k, v, kpm, am


def _run(m, q, k, v, kpm, am, need_weights, causal=False, average=True):
    o, w = m(q, k, v, key_padding_mask=kpm, need_weights=need_weights, attn_mask=am, is_causal=causal,
             average_attn_weights=average)
    leaves = list(dict.fromkeys([q, k, v])) + list(m.parameters())
    g = torch.autograd.grad(o, leaves, torch.ones_like(o), allow_unused=True)
    return o, w, g


def _close(a, b, atol=1e-5, rtol=1e-4):
    if a is None or b is None:
        assert a is None and b is None
        return
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# a deterministic sample of the (option x self-attention x mask x need_weights x batched) grid
GRID = [c for i, c in enumerate(itertools.product(range(len(OPTIONS)), (True, False), MASKS, (True, False),
                                                  (True, False)))
        if i % 9 == 0 and not (OPTIONS[c[0]].get("kdim") and c[1])]


@pytest.mark.parametrize("opt,self_attn,masks,need_weights,batched", GRID)
def test_matches_torch(opt, self_attn, masks, need_weights, batched):
    kw = OPTIONS[opt]
    nat, ours = _pair(kw)
    q, k, v, kpm, am = _inputs(kw, self_attn, masks, batched)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "mismatched key_padding_mask and attn_mask" deprecation
        o1, w1, g1 = _run(nat, q, k, v, kpm, am, need_weights)
        o2, w2, g2 = _run(ours, q, k, v, kpm, am, need_weights)
    _close(o2, o1)
    _close(w2, w1)
    for a, b in zip(g2, g1):
        _close(a, b)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("kpm", [False, True])
def test_is_causal_hint(need_weights, kpm):
    nat, ours = _pair({"batch_first": True})
    q, k, v, pad, _ = _inputs({"batch_first": True}, True, "kpm" if kpm else "none", True)
    am = torch.nn.Transformer.generate_square_subsequent_mask(5)
    r1 = _run(nat, q, k, v, pad, am, need_weights, causal=True, average=False)
    r2 = _run(ours, q, k, v, pad, am, need_weights, causal=True, average=False)
    _close(r2[0], r1[0])
    _close(r2[1], r1[1])
    for a, b in zip(r2[2], r1[2]):
        _close(a, b)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(q, k, v, is_causal=True)


def test_float64_and_weights_per_head():
    nat, ours = _pair({}, E=12, H=3)
    nat.double()
    ours.double()
    q, k, v, kpm, am = _inputs({}, False, "kpm+am", True, E=12, H=3, dtype=torch.float64)
    r1 = _run(nat, q, k, v, kpm, am, True, average=False)
    r2 = _run(ours, q, k, v, kpm, am, True, average=False)
    assert r2[1].shape == (3, 3, 5, 6)
    _close(r2[0], r1[0], 1e-12, 1e-10)
    _close(r2[1], r1[1], 1e-12, 1e-10)
    for a, b in zip(r2[2], r1[2]):
        _close(a, b, 1e-12, 1e-10)


def test_init_state_dict_and_repr_are_torchs():
    for kw in [{}, {"kdim": 5, "vdim": 3}, {"add_bias_kv": True, "bias": False}]:
        nat, ours = _pair(kw)
        assert isinstance(ours, torch.nn.MultiheadAttention)
        assert list(ours.state_dict()) == list(nat.state_dict())
        for key, val in nat.state_dict().items():
            assert torch.equal(ours.state_dict()[key], val), key
        assert repr(ours) == repr(nat)
        # round trip both ways
        torch.manual_seed(9)
        other = torch.nn.MultiheadAttention(8, 2, **kw)
        ours.load_state_dict(other.state_dict())
        back = torch.nn.MultiheadAttention(8, 2, **kw)
        back.load_state_dict(ours.state_dict())
        for key, val in other.state_dict().items():
            assert torch.equal(back.state_dict()[key], val)
        q, k, v, kpm, am = _inputs(kw, False, "kpm", True)
        _close(ours(q, k, v, kpm)[0], other(q, k, v, kpm)[0])
    # pickling keeps the hook that keeps torch's fast path away
    clone = pickle.loads(pickle.dumps(ours))
    assert len(clone._forward_pre_hooks) == 1


def test_dropout_only_in_training():
    nat, ours = _pair({"dropout": 0.5, "batch_first": True})
    q, k, v, _, _ = _inputs({"batch_first": True}, True, "none", True)
    ours.eval()
    nat.eval()
    _close(ours(q, k, v)[0], nat(q, k, v)[0])
    ours.train()
    torch.manual_seed(3)
    a = ours(q, k, v, need_weights=False)[0]
    torch.manual_seed(3)
    b = ours(q, k, v, need_weights=False)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, nat(q, k, v)[0].detach())
    a.sum().backward()
    assert ours.in_proj_weight.grad is not None and torch.isfinite(ours.in_proj_weight.grad).all()


def test_weights_carry_no_gradient_and_empty_rows():
    _, ours = _pair({"batch_first": True})
    q, k, v, _, _ = _inputs({"batch_first": True}, True, "none", True)
    kpm = torch.ones(3, 5, dtype=torch.bool)           # batch 0: every key padded out
    kpm[1:] = False
    o, w = ours(q, k, v, key_padding_mask=kpm)
    assert not w.requires_grad and o.requires_grad
    assert torch.equal(w[0], torch.zeros_like(w[0]))
    o2, _ = ours(q, k, v, key_padding_mask=kpm, need_weights=False)
    assert torch.isfinite(o2).all()


def test_meta_device():
    with torch.device("meta"):
        m = mte.nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 7, 16, device="meta")
    o, w = m(x, x, x)
    assert o.device.type == "meta" and o.shape == (2, 7, 16) and w.shape == (2, 7, 7)


def test_bad_inputs_like_torch():
    nat, ours = _pair({})
    q = torch.randn(5, 3, 8)
    for m in (nat, ours):
        with pytest.raises(AssertionError, match="embedding dimension of 8, but got 6"):
            m(torch.randn(5, 3, 6), torch.randn(5, 3, 6), torch.randn(5, 3, 6))
        with pytest.raises(RuntimeError, match="2D attn_mask"):
            m(q, q, q, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
        with pytest.raises(RuntimeError, match="3D attn_mask"):
            m(q, q, q, attn_mask=torch.zeros(5, 5, 5, dtype=torch.bool))
        with pytest.raises(AssertionError):
            m(q, q, q, key_padding_mask=torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(AssertionError, match="divisible"):
        mte.nn.MultiheadAttention(10, 3)


@pytest.mark.parametrize("backend", [b for b in testing.backends_for("cpu") if b == "triton"])
def test_triton_backend_small(backend):
    nat, ours = _pair({"batch_first": True})
    q, k, v, kpm, am = _inputs({"batch_first": True}, False, "kpm+am", True, N=2, L=3, S=4)
    r1 = _run(nat, q, k, v, kpm, am, True)
    with mte.use_backend(backend):
        r2 = _run(ours, q, k, v, kpm, am, True)
    _close(r2[0], r1[0])
    _close(r2[1], r1[1])
    for a, b in zip(r2[2], r1[2]):
        _close(a, b)


# ---------------------------------------------------------------------------------------- transformers


class _Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(f"{func.namespace}::{func._opname}")
        return func(*args, **(kwargs or {}))


NATIVE_ATTENTION = ("aten::_transformer_encoder_layer_fwd", "aten::_native_multi_head_attention",
                    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                    "aten::scaled_dot_product_attention", "aten::_softmax", "aten::bmm", "aten::baddbmm")


def _swap(model):
    """Replace every self_attn / multihead_attn by ours, with the same weights."""
    for m in list(model.modules()):
        for attr in ("self_attn", "multihead_attn"):
            sub = getattr(m, attr, None)
            if isinstance(sub, torch.nn.MultiheadAttention) and not isinstance(sub, mte.nn.MultiheadAttention):
                new = mte.nn.MultiheadAttention(sub.embed_dim, sub.num_heads, dropout=sub.dropout,
                                                batch_first=sub.batch_first)
                new.load_state_dict(sub.state_dict())
                setattr(m, attr, new)
    return model


def _compare(nat, ours, call, train):
    nat.train(train)
    ours.train(train)
    if train:
        a, b = call(nat), None
        with _Trace() as t:
            b = call(ours)
            b.sum().backward()
        a.sum().backward()
        _close(b, a, 2e-5, 1e-4)
        for (n1, p1), (n2, p2) in zip(nat.named_parameters(), ours.named_parameters()):
            assert n1 == n2
            _close(p2.grad, p1.grad, 2e-5, 1e-4)
    else:
        with torch.no_grad():
            with _Trace() as tn:
                a = call(nat)
            with _Trace() as t:
                b = call(ours)
        if a.is_nested:
            a, b = a.to_padded_tensor(0.0), b.to_padded_tensor(0.0)
        _close(b, a, 2e-5, 1e-4)
    assert "minitorch_ext::attention_fwd" in t.names, sorted(t.names)
    assert not [n for n in NATIVE_ATTENTION if n in t.names], sorted(t.names)
    if train:
        assert "minitorch_ext::attention_bwd" in t.names
    return t.names if train else tn.names


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_transformer_encoder_swap(norm_first, train):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nat = torch.nn.TransformerEncoder(layer, 2)
    ours = _swap(copy.deepcopy(nat))
    x = torch.randn(3, 7, 16)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[0, 5:] = True
    kpm[1, 6:] = True
    causal = torch.nn.Transformer.generate_square_subsequent_mask(7)
    native_names = _compare(nat, ours, lambda m: m(x), train)
    if not train and not norm_first:
        # the fast path torch takes here (and that ours must not) really is the fused native layer
        assert "aten::_transformer_encoder_layer_fwd" in native_names
    _compare(nat, ours, lambda m: m(x, src_key_padding_mask=kpm), train)   # eval: a NestedTensor stack
    _compare(nat, ours, lambda m: m(x, mask=causal, is_causal=True), train)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_transformer_decoder_swap(norm_first, train):
    torch.manual_seed(0)
    layer = torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first)   # seq-first
    nat = torch.nn.TransformerDecoder(layer, 2)
    ours = _swap(copy.deepcopy(nat))
    tgt, mem = torch.randn(6, 2, 16), torch.randn(9, 2, 16)
    mpm = torch.zeros(2, 9, dtype=torch.bool)
    mpm[1, 7:] = True
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    _compare(nat, ours, lambda m: m(tgt, mem, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=mpm),
             train)
