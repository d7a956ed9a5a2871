"""libmha.KVCache(window=W): a ring cache under a sliding-window
DecoderAttention gives the outputs of a full cache over more tokens than
the ring holds, on every device; its length counts every token; a ring
narrower than the layer's window, or a truncation to dropped tokens, is
refused."""
import numpy as np
import pytest

import libmha

from conftest import SPECS, get_device, rng

E, HQ, HKV, D, W, N = 32, 4, 2, 8, 4, 14


def layer(dev, window=W):
    r = rng(7)
    a = libmha.DecoderAttention(E, HQ, num_kv_heads=HKV, window=window,
                                device=dev)
    a.load_state_dict({
        "q_proj.weight": 0.2 * r.standard_normal((HQ * D, E)),
        "k_proj.weight": 0.2 * r.standard_normal((HKV * D, E)),
        "v_proj.weight": 0.2 * r.standard_normal((HKV * D, E)),
        "o_proj.weight": 0.2 * r.standard_normal((E, HQ * D))})
    return a


@pytest.mark.parametrize("spec", SPECS)
def test_ring_equals_full_cache(spec):
    dev = get_device(spec)
    a = layer(dev)
    x = rng(8).standard_normal((1, N, E)).astype(np.float32)
    full = libmha.KVCache(N, HKV, D, device=dev)
    ring = libmha.KVCache(2 * W, HKV, D, device=dev, window=W)
    assert ring.window == W and full.window == 0
    for t in range(N):  # 14 tokens through a ring of 8 rows
        step = x[:, t:t + 1]
        np.testing.assert_allclose(a(step, cache=ring), a(step, cache=full),
                                   atol=1e-5, rtol=0)
    assert ring.length(0) == N == full.length(0)
    with pytest.raises(libmha.InvalidArgumentError, match="dropped"):
        ring.truncate(0, 2)
    ring.truncate(0, N - 1)
    assert ring.length(0) == N - 1


def test_ring_narrower_than_layer_window_is_refused():
    dev = get_device("cpu")
    ring = libmha.KVCache(2 * W, HKV, D, device=dev, window=W)
    x = np.zeros((1, 1, E), np.float32)
    with pytest.raises(libmha.InvalidArgumentError, match="ring of window 4"):
        layer(dev, window=0)(x, cache=ring)
    with pytest.raises(libmha.InvalidArgumentError, match="window"):
        libmha.KVCache(4, HKV, D, device=dev, window=5)
