"""libmha.DecoderAttention.prune_heads on every device: a GQA layer with
one kv group pruned equals a smaller layer made from the kept heads'
weights (prefill, then a decode step); a partial group is refused."""
import numpy as np
import pytest

import libmha

from conftest import SPECS, get_device
from test_decoder import B, D, E, HKV, HQ, T, layer, weights


def _kept_weights(w, group):
    """The weights of every kv group but group (HQ // HKV query heads)."""
    g = HQ // HKV
    q = [h for h in range(HQ) if h // g != group]
    kv = [k for k in range(HKV) if k != group]
    rows = lambda hs: np.concatenate([np.arange(h * D, h * D + D) for h in hs])
    out = dict(w)
    for name in ("q_proj.weight", "q_proj.bias"):
        out[name] = w[name][rows(q)]
    for name in ("k_proj.weight", "k_proj.bias", "v_proj.weight",
                 "v_proj.bias"):
        out[name] = w[name][rows(kv)]
    out["o_proj.weight"] = w["o_proj.weight"][:, rows(q)]
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_pruned_group_equals_smaller_layer(spec):
    dev = get_device(spec)
    w = weights(3)
    pruned = layer(dev, w)
    pruned.prune_heads([2, 3])
    assert pruned.kept_heads() == [0, 1]
    small = libmha.DecoderAttention(E, HQ - 2, num_kv_heads=HKV - 1,
                                    head_dim=D, qkv_bias=True, o_bias=True,
                                    device=dev)
    small.load_state_dict(_kept_weights(w, 1))
    caches = [libmha.KVCache(16, HKV - 1, D, num_sequences=B, device=dev)
              for _ in range(2)]
    x = np.random.default_rng(5).standard_normal((B, T + 1, E))
    x = x.astype(np.float32)
    for part in (x[:, :T], x[:, T:]):
        got = pruned(part, cache=caches[0])
        want = small(part, cache=caches[1])
        np.testing.assert_allclose(got, want, atol=1e-5)
    for obj in caches + [pruned, small]:
        obj.close()


def test_partial_group_is_refused():
    a = layer(get_device("cpu"))
    with pytest.raises(libmha.InvalidArgumentError, match="kv group"):
        a.prune_heads([1])
    assert a.kept_heads() == list(range(HQ))
    a.close()
