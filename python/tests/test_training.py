"""Training from Python on every device: MultiheadAttention's and
DecoderAttention's (GQA, NeoX RoPE, biases) gradients of the weights and
inputs against float64 torch autograd, each within 1e-4 of its largest
magnitude; accumulation; AdamW steps against torch.optim.AdamW; Gradients
as a mapping and as device tensors; the bad calls with their exceptions."""
import numpy as np
import pytest
import torch

import libmha

from conftest import SPECS, get_device, random_mha, rng

E, H, L, S, N = 8, 2, 5, 4, 2
TOL = 1e-4

# (torch constructor options, self-attention on one input, causal, padding)
CONFIGS = {
    "self_causal": ({}, True, True, False),
    "cross_all": ({"kdim": 6, "vdim": 5, "add_bias_kv": True,
                   "batch_first": True}, False, False, True),
}


def close_to(got, want, what):
    """|got - want| within TOL of want's largest magnitude."""
    want = np.asarray(want, np.float64)
    scale = max(np.abs(want).max(), 1e-12)
    err = np.abs(np.asarray(got, np.float64) - want).max()
    assert err <= TOL * scale, "%s: error %g, scale %g" % (what, err, scale)


def torch_mha(cfg, seed=0):
    """A float64 torch layer with every parameter random."""
    return random_mha(E, H, cfg, seed).double()


def mha_inputs(cfg, shared, gen):
    """query, key, value (float64 torch leaves) for cfg's layout."""
    bf = cfg.get("batch_first", False)

    def make(t, dim):
        shape = (N, t, dim) if bf else (t, N, dim)
        return torch.tensor(gen.standard_normal(shape), requires_grad=True)

    if shared:
        x = make(L, E)
        return x, x, x
    return (make(L, E), make(S, cfg.get("kdim", E)),
            make(S, cfg.get("vdim", E)))


def mha_step(m, layer, cfg, shared, causal, padded, gen):
    """One forward and backward of both layers with the same inputs and
    upstream gradient: libmha's (grads, input grads) and torch's."""
    q, k, v = mha_inputs(cfg, shared, gen)
    kpm = np.zeros((N, S), bool)
    kpm[0, -1] = padded
    mask = np.triu(np.ones((L, L), bool), 1) if causal else None
    y, _ = m(q, k, v, need_weights=False,
             key_padding_mask=torch.from_numpy(kpm) if padded else None,
             attn_mask=torch.from_numpy(mask) if causal else None)
    dy = torch.tensor(gen.standard_normal(y.shape))
    y.backward(dy)
    host = [t.detach().numpy() for t in (q, k, v)]
    if shared:  # one array as query, key and value
        host = [host[0]] * 3
    out, w = layer(*host, need_weights=False, is_causal=causal,
                   key_padding_mask=kpm if padded else None,
                   save_for_backward=True)
    assert w is None
    close_to(out, y.detach().numpy(), "output")
    grads, dx = layer.backward(dy.numpy(), return_input_grads=True)
    return grads, dx, (q, k, v), dy


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("spec", SPECS)
def test_layer_gradients_match_torch(spec, name):
    cfg, shared, causal, padded = CONFIGS[name]
    m = torch_mha(cfg)
    layer = libmha.MultiheadAttention.from_torch(m, get_device(spec))
    grads, dx, (q, k, v), dy = mha_step(m, layer, cfg, shared, causal,
                                        padded, rng(1))
    assert sorted(grads) == sorted(layer.weight_names())
    params = dict(m.named_parameters())
    for name in grads:
        assert grads[name].shape == tuple(params[name].shape)
        close_to(grads[name], params[name].grad, name)
    if shared:
        close_to(dx[0] + dx[1] + dx[2], q.grad, "dx")
    else:
        for got, t, what in zip(dx, (q, k, v), ("dquery", "dkey", "dvalue")):
            close_to(got, t.grad, what)
    # accumulate adds a second backward of the same forward
    before = {n: grads[n] for n in grads}
    layer.backward(dy.numpy(), accumulate=True)
    for name in grads:
        np.testing.assert_allclose(grads[name], 2 * before[name], rtol=1e-6,
                                   atol=1e-6)


def test_device_tensors_in_and_out(device):
    """Tensors in give Tensors out; a gradient is also a device Tensor."""
    m = torch_mha({})
    layer = libmha.MultiheadAttention.from_torch(m, device)
    x = rng(2).standard_normal((L, N, E))
    xt = libmha.Tensor(x, device)
    out, _ = layer(xt, xt, xt, need_weights=False, save_for_backward=True)
    assert isinstance(out, libmha.Tensor)
    dy = libmha.Tensor(np.ones((L, N, E)), device)
    grads, dx = layer.backward(dy, return_input_grads=True)
    assert all(isinstance(t, libmha.Tensor) for t in dx)
    t = grads.tensor("out_proj.bias")
    assert isinstance(t, libmha.Tensor) and t.shape == (E,)
    # d(sum of outputs)/d(out_proj.bias) counts the rows
    np.testing.assert_allclose(t.numpy(), np.full(E, L * N), rtol=1e-6)
    grads.zero()
    assert not grads["in_proj_weight"].any()
    assert "bias_k" not in grads and len(grads) == 4


def test_torch_tensors_in_and_out():
    m = torch_mha({"batch_first": True})
    layer = libmha.MultiheadAttention.from_torch(m, "cpu")
    x = torch.randn(N, L, E)
    out, _ = layer(x, x, x, need_weights=False, save_for_backward=True)
    grads, dx = layer.backward(torch.ones_like(out), return_input_grads=True)
    assert isinstance(out, torch.Tensor)
    assert all(isinstance(t, torch.Tensor) and t.shape == x.shape
               for t in dx)
    assert isinstance(grads["in_proj_bias"], np.ndarray)


def test_head_gates_gradient():
    """dL/dg_h = sum of dY . (O_h Wo_h^T) over the batch item's rows, from
    the head outputs of the same forward."""
    m = torch_mha({})
    layer = libmha.MultiheadAttention.from_torch(m, "cpu")
    x = rng(3).standard_normal((L, N, E)).astype(np.float32)
    gates = np.array([0.5, 2.0], np.float32)
    _, _, heads = layer(x, x, x, need_weights=False, head_gates=gates,
                        return_head_outputs=True)
    layer(x, x, x, need_weights=False, head_gates=gates,
          save_for_backward=True)
    dy = rng(4).standard_normal((L, N, E))
    _, dg = layer.backward(dy, return_gates_grad=True)
    wo = m.out_proj.weight.detach().numpy().reshape(E, H, E // H)
    want = np.einsum("lne,nhld,ehd->h", dy, heads, wo)
    close_to(dg, want, "grad_head_gates")


def adamw_pair(m, lr, steps, **kw):
    """libmha and torch AdamW over the same steps of m's layer, lr
    changing per step; returns both layers."""
    layer = libmha.MultiheadAttention.from_torch(m, kw.pop("device"))
    opt = libmha.AdamW(layer, lr=lr, **kw)
    topt = torch.optim.AdamW(m.parameters(), lr=lr, **kw)
    gen = rng(5)
    x = gen.standard_normal((L, N, E))
    dy = torch.tensor(gen.standard_normal((L, N, E)))
    for t in range(1, steps + 1):
        layer(x, x, x, need_weights=False, save_for_backward=True)
        layer.backward(dy.numpy())
        opt.step(lr=lr * t)  # a warm-up: the rate changes per step
        topt.zero_grad()
        xt = torch.from_numpy(x)
        m(xt, xt, xt, need_weights=False)[0].backward(dy)
        topt.param_groups[0]["lr"] = lr * t
        topt.step()
    assert opt.steps == steps
    return layer, m


def test_adamw_matches_torch(device):
    # in_proj_bias's key part has gradient 0 (softmax ignores a constant
    # per row): rounding noise there, which eps keeps from becoming steps
    layer, m = adamw_pair(torch_mha({}), 1e-3, 3, betas=(0.8, 0.99),
                          eps=1e-3, weight_decay=0.1, device=device)
    got = layer.state_dict()
    for name, want in m.state_dict().items():
        np.testing.assert_allclose(got[name], want.numpy(), atol=1e-5,
                                   rtol=0, err_msg=name)


# ---- the decoder layer -------------------------------------------------------

B, T, DE, HQ, HKV, D = 2, 5, 16, 4, 2, 4


def decoder_weights(seed=0):
    r = rng(seed)
    shapes = {"q_proj.weight": (HQ * D, DE), "k_proj.weight": (HKV * D, DE),
              "v_proj.weight": (HKV * D, DE), "o_proj.weight": (DE, HQ * D),
              "q_proj.bias": (HQ * D,), "k_proj.bias": (HKV * D,),
              "v_proj.bias": (HKV * D,), "o_proj.bias": (DE,)}
    return {k: 0.3 * r.standard_normal(s) for k, s in shapes.items()}


def torch_decoder(x, w, theta=10000.0, gates=None):
    """HF LlamaAttention (NeoX RoPE, GQA, causal prefill) in torch; gates
    [B, HQ] multiply each head's attention output."""
    def proj(name, heads):
        return (x @ w[name + ".weight"].T + w[name + ".bias"]).view(
            B, T, heads, D)

    half = D // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float64) * 2.0 / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv
    cos, sin = torch.cos(ang)[None, :, None], torch.sin(ang)[None, :, None]

    def rope(t):
        t1, t2 = t[..., :half], t[..., half:]
        return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1)

    q, k = rope(proj("q_proj", HQ)), rope(proj("k_proj", HKV))
    v = proj("v_proj", HKV)
    k, v = (t.repeat_interleave(HQ // HKV, dim=2) for t in (k, v))
    s = torch.einsum("bihd,bjhd->bhij", q, k) / D ** 0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -np.inf)
    o = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)
    if gates is not None:
        o = o * gates[:, None, :, None]
    return o.reshape(B, T, HQ * D) @ w["o_proj.weight"].T + w["o_proj.bias"]


def decoder_pair(device, seed=0):
    w = decoder_weights(seed)
    dec = libmha.DecoderAttention(DE, HQ, num_kv_heads=HKV, qkv_bias=True,
                                  o_bias=True, device=device)
    dec.load_state_dict(w)
    tw = {k: torch.tensor(v, requires_grad=True) for k, v in w.items()}
    cache = libmha.KVCache(T, HKV, D, num_sequences=B, device=device)
    return dec, tw, cache


@pytest.mark.parametrize("spec", SPECS)
def test_decoder_gradients_match_torch(spec):
    dev = get_device(spec)
    dec, tw, cache = decoder_pair(dev)
    gen = rng(6)
    x = torch.tensor(gen.standard_normal((B, T, DE)), requires_grad=True)
    y = torch_decoder(x, tw)
    dy = torch.tensor(gen.standard_normal((B, T, DE)))
    y.backward(dy)
    out = dec(x.detach().numpy(), cache=cache, save_for_backward=True)
    close_to(out, y.detach().numpy(), "output")
    grads, dx = dec.backward(dy.numpy(), return_input_grads=True)
    close_to(dx, x.grad, "dx")
    assert sorted(grads) == sorted(tw)
    for name in grads:
        close_to(grads[name], tw[name].grad, name)


@pytest.mark.parametrize("spec", SPECS)
def test_decoder_gates_gradient_matches_torch(spec):
    """Per-sequence head gates: dL/dg as autograd gives it, and dx."""
    dec, tw, cache = decoder_pair(get_device(spec), seed=2)
    gen = rng(8)
    x = torch.tensor(gen.standard_normal((B, T, DE)), requires_grad=True)
    g = torch.tensor(gen.uniform(0.0, 2.0, (B, HQ)), requires_grad=True)
    y = torch_decoder(x, tw, gates=g)
    dy = torch.tensor(gen.standard_normal((B, T, DE)))
    y.backward(dy)
    out = dec(x.detach().numpy(), cache=cache, save_for_backward=True,
              head_gates=g.detach().numpy())
    close_to(out, y.detach().numpy(), "gated output")
    _, dx, dg = dec.backward(dy.numpy(), return_input_grads=True,
                             return_gates_grad=True)
    close_to(dx, x.grad, "dx")
    close_to(dg, g.grad, "grad_head_gates")


def test_decoder_adamw_matches_torch(device):
    """One step on each side, then the layers' outputs agree."""
    dec, tw, cache = decoder_pair(device, seed=1)
    opt = libmha.AdamW(dec, lr=1e-2)
    topt = torch.optim.AdamW(tw.values(), lr=1e-2)
    x = rng(7).standard_normal((B, T, DE))
    dy = np.ones((B, T, DE))
    dec(x, cache=cache, save_for_backward=True)
    opt.step(dec.backward(dy))
    torch_decoder(torch.from_numpy(x), tw).backward(torch.from_numpy(dy))
    topt.step()
    cache.clear()
    with torch.no_grad():
        want = torch_decoder(torch.from_numpy(x), tw).numpy()
    close_to(dec(x, cache=cache), want, "output after a step")


# ---- bad calls ---------------------------------------------------------------

def test_bad_calls():
    m = torch_mha({})
    layer = libmha.MultiheadAttention.from_torch(m, "cpu")
    x = np.ones((L, N, E), np.float32)
    with pytest.raises(libmha.BadStateError, match="no training forward"):
        layer.backward(x)
    with pytest.raises(libmha.UnsupportedError, match="need_weights"):
        layer(x, x, x, save_for_backward=True)
    layer(x, x, x, need_weights=False, save_for_backward=True)
    with pytest.raises(libmha.ShapeMismatchError, match="grad_output"):
        layer.backward(np.ones((L, N, E + 1)))
    with pytest.raises(libmha.InvalidArgumentError, match="no head_gates"):
        layer.backward(x, return_gates_grad=True)
    with pytest.raises(libmha.NotFoundError, match="nope"):
        layer.grads.tensor("nope")
    with pytest.raises(libmha.InvalidArgumentError, match="bias_k"):
        layer.grads.tensor("bias_k")
    with pytest.raises(KeyError):
        layer.grads["bias_k"]
    assert layer.grads.get("bias_k") is None
    other = libmha.MultiheadAttention.from_torch(m, "cpu")
    with pytest.raises(libmha.InvalidArgumentError, match="another layer"):
        layer.backward(x, grads=other.grads)
    opt = libmha.AdamW(layer)
    with pytest.raises(libmha.InvalidArgumentError, match="another layer"):
        opt.step(other.grads)
    opt.step()
    with pytest.raises(libmha.BadStateError, match="weights changed"):
        layer.backward(x)
    with pytest.raises(libmha.InvalidArgumentError):
        libmha.AdamW(layer, betas=(1.0, 0.999))
    grads = layer.grads
    layer.close()  # its gradients and optimizers close first
    assert grads.closed and opt.closed
    with pytest.raises(libmha.BadStateError, match="closed"):
        grads["in_proj_weight"]


def test_decoder_bad_calls():
    dec, _, cache = decoder_pair("cpu")
    x = np.ones((B, 2, DE), np.float32)
    with pytest.raises(libmha.BadStateError, match="no training forward"):
        dec.backward(x)
    dec(x, cache=cache)
    with pytest.raises(libmha.UnsupportedError, match="not empty|empty"):
        dec(x, cache=cache, save_for_backward=True)
    cache.clear()
    dec(x, cache=cache, save_for_backward=True)
    with pytest.raises(libmha.ShapeMismatchError):
        dec.backward(np.ones((B, 3, DE)))
    with pytest.raises(libmha.InvalidArgumentError, match="no head_gates"):
        dec.backward(x, return_gates_grad=True)
