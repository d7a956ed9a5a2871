"""libmha.DecoderAttention and libmha.KVCache on every device: a prefill
against a float64 HF LlamaAttention reference (GQA, NeoX RoPE, biases);
prefill then token-by-token decode equal to one whole prefill; rollback by
truncate; explicit positions; weights by HF name from a state_dict and a
safetensors file; errors."""
import numpy as np
import pytest
import torch

import libmha

from conftest import SPECS, get_device, rng, write_safetensors
from reference import decoder as reference

B, T, E, HQ, HKV, D = 2, 6, 32, 4, 2, 8


def weights(seed=0, bias=True):
    r = rng(seed)
    w = {"q_proj.weight": r.standard_normal((HQ * D, E)),
         "k_proj.weight": r.standard_normal((HKV * D, E)),
         "v_proj.weight": r.standard_normal((HKV * D, E)),
         "o_proj.weight": r.standard_normal((E, HQ * D))}
    if bias:
        w.update({"q_proj.bias": r.standard_normal(HQ * D),
                  "k_proj.bias": r.standard_normal(HKV * D),
                  "v_proj.bias": r.standard_normal(HKV * D),
                  "o_proj.bias": r.standard_normal(E)})
    return {k: (0.2 * v).astype(np.float32) for k, v in w.items()}


def layer(device, w=None, **kw):
    w = weights() if w is None else w
    a = libmha.DecoderAttention(E, HQ, num_kv_heads=HKV, qkv_bias=True,
                                o_bias=True, device=device, **kw)
    a.load_state_dict(w)
    return a


@pytest.mark.parametrize("spec", SPECS)
def test_prefill_matches_reference(spec):
    dev = get_device(spec)
    x = rng(1).standard_normal((B, T, E)).astype(np.float32)
    a = layer(dev)
    cache = libmha.KVCache(16, HKV, D, num_sequences=B, device=dev)
    got = a(x, cache=cache)
    assert got.shape == (B, T, E) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(x, weights(), HQ, HKV),
                               atol=1e-4, rtol=0)
    assert [cache.length(s) for s in range(B)] == [T, T]


@pytest.mark.parametrize("spec", SPECS)
def test_decode_equals_prefill_and_rollback(spec):
    dev = get_device(spec)
    x = rng(2).standard_normal((B, T, E)).astype(np.float32)
    a = layer(dev)
    whole = libmha.KVCache(T, HKV, D, num_sequences=B, device=dev)
    want = a(x, cache=whole)
    cache = libmha.KVCache(T, HKV, D, num_sequences=B, device=dev)
    steps = [a(x[:, :3], cache=cache)]
    for t in range(3, T):
        xt = libmha.Tensor(x[:, t:t + 1], dev)  # device in, device out
        out = a(xt, cache=cache)
        assert isinstance(out, libmha.Tensor)
        steps.append(out.numpy())
    np.testing.assert_allclose(np.concatenate(steps, 1), want, atol=1e-5,
                               rtol=0)
    assert cache.length(1) == T
    # the cache is full: one more token is refused and changes nothing
    with pytest.raises(libmha.LimitReachedError):
        a(x[:, :1], cache=cache)
    assert cache.length(0) == T
    # rollback: keep 4 tokens and decode token 4 again (torch in and out)
    for s in range(B):
        cache.truncate(s, 4)
    again = a(torch.from_numpy(x[:, 4:5]), cache=cache)
    assert isinstance(again, torch.Tensor)
    np.testing.assert_allclose(again.numpy(), want[:, 4:5], atol=1e-5,
                               rtol=0)
    cache.clear()
    assert cache.length(0) == 0


def test_positions_and_kv_cache_append():
    """Explicit positions shift the rotary phase; append fills a cache
    from keys and values computed elsewhere."""
    dev = get_device("cpu:0")
    x = rng(3).standard_normal((1, 3, E)).astype(np.float32)
    a = layer(dev)
    pos = np.array([[0, 2, 7]])  # RoPE sees differences: uneven steps
    cache = libmha.KVCache(8, HKV, D, device=dev)
    got = a(x, positions=pos, cache=cache)
    np.testing.assert_allclose(
        got, reference(x, weights(), HQ, HKV, positions=pos), atol=1e-4,
        rtol=0)
    kv = rng(4).standard_normal((2, HKV, D)).astype(np.float32)
    cache.append(0, kv, kv)
    assert cache.length(0) == 5
    with pytest.raises(libmha.LimitReachedError):
        cache.append(0, np.zeros((4, HKV, D), np.float32),
                     np.zeros((4, HKV, D), np.float32))
    assert cache.length(0) == 5
    with pytest.raises(libmha.Error):
        cache.truncate(0, 6)


def test_load_by_prefix(tmp_path):
    dev = get_device("cpu:0")
    w = weights(5)
    model = {"model.layers.1.self_attn." + k: v for k, v in w.items()}
    model["model.layers.1.mlp.up_proj.weight"] = np.zeros(3, np.float32)
    x = rng(6).standard_normal((1, 4, E)).astype(np.float32)
    want = reference(x, w, HQ, HKV)
    a = libmha.DecoderAttention(E, HQ, num_kv_heads=HKV, qkv_bias=True,
                                o_bias=True, device=dev)
    missing, _ = a.load_state_dict(model, prefix="model.layers.1.self_attn.")
    assert missing == []
    np.testing.assert_allclose(a(x, cache=libmha.KVCache(4, HKV, D,
                                                          device=dev)),
                               want, atol=1e-4, rtol=0)
    path = tmp_path / "model.safetensors"
    write_safetensors(path, model)
    b = libmha.DecoderAttention(E, HQ, num_kv_heads=HKV, qkv_bias=True,
                                o_bias=True, device=dev)
    b.load_safetensors(path, prefix="model.layers.1.self_attn.")
    np.testing.assert_allclose(b(x, cache=libmha.KVCache(4, HKV, D,
                                                          device=dev)),
                               want, atol=1e-4, rtol=0)
    with pytest.raises(libmha.MissingWeightError, match="layers.2"):
        b.load_safetensors(path, prefix="model.layers.2.self_attn.")


def test_errors():
    dev = get_device("cpu:0")
    a = libmha.DecoderAttention(E, HQ, num_kv_heads=HKV, device=dev)
    cache = libmha.KVCache(4, HKV, D, device=dev)
    x = np.zeros((1, 2, E), np.float32)
    with pytest.raises(libmha.MissingWeightError):
        a(x, cache=cache)
    assert cache.length(0) == 0
    with pytest.raises(libmha.MissingWeightError, match="o_proj.weight"):
        a.load_state_dict({"q_proj.weight": np.zeros((HQ * D, E))})
    with pytest.raises(libmha.InvalidArgumentError):
        libmha.DecoderAttention(E, HQ, num_kv_heads=3, device=dev)
    with pytest.raises(libmha.InvalidArgumentError, match="rope 'alibi'"):
        libmha.DecoderAttention(E, HQ, rope="alibi", device=dev)
    with pytest.raises(libmha.InvalidArgumentError, match="KVCache"):
        a(x, cache=None)
    b = layer(dev)
    with pytest.raises(libmha.ShapeMismatchError):
        b(np.zeros((1, 2, E + 1), np.float32), cache=cache)
    with pytest.raises(libmha.ShapeMismatchError):  # the cache's head_dim
        b(x, cache=libmha.KVCache(4, HKV, D * 2, device=dev))
