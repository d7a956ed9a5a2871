"""Head control through libmha.MultiheadAttention: head gates and head
outputs against a float64 reference written out from the module's
weights, pruning (kept heads, the pruned layer equals the gated one),
saving and loading a pruned layer, and bad heads."""
import numpy as np
import pytest
import torch

import libmha
from conftest import SPECS


def _module(E=16, H=4, seed=3):
    torch.manual_seed(seed)
    return torch.nn.MultiheadAttention(E, H, batch_first=True).eval()


def _reference(m, x, gates):
    """Gated self-attention in float64: out, head outputs [N, H, L, d]."""
    E, H = m.embed_dim, m.num_heads
    d = E // H
    w = m.in_proj_weight.detach().double()
    b = m.in_proj_bias.detach().double()
    x = torch.from_numpy(x).double()
    q, k, v = (torch.nn.functional.linear(x, w[i * E:(i + 1) * E],
                                          b[i * E:(i + 1) * E])
               .view(x.shape[0], x.shape[1], H, d).transpose(1, 2)
               for i in range(3))
    p = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    heads = p @ v
    g = torch.as_tensor(gates, dtype=torch.float64).view(-1, H, 1, 1)
    o = (heads * g).transpose(1, 2).reshape(x.shape[0], x.shape[1], E)
    out = torch.nn.functional.linear(o, m.out_proj.weight.detach().double(),
                                     m.out_proj.bias.detach().double())
    return out.numpy(), heads.numpy()


@pytest.mark.parametrize("spec", SPECS)
def test_gates_and_head_outputs(spec):
    m = _module()
    layer = libmha.MultiheadAttention.from_torch(m, device=spec)
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(
        np.float32)
    gates = np.array([[1.0, 0.0, 0.5, -2.0], [0.0, 0.0, 1.0, 3.0]],
                     np.float32)
    out, w, heads = layer(x, x, x, need_weights=False, head_gates=gates,
                          return_head_outputs=True)
    want, want_heads = _reference(m, x, gates)
    want_heads[:, 1] = 0.0  # gated off in every batch item: not computed
    assert w is None
    np.testing.assert_allclose(out, want, atol=1e-4)
    np.testing.assert_allclose(heads, want_heads, atol=1e-4)
    layer.close()


@pytest.mark.parametrize("spec", SPECS)
def test_prune_equals_gated_and_round_trips(spec, tmp_path):
    m = _module(E=32, H=8)
    x = np.random.default_rng(2).standard_normal((2, 6, 32)).astype(
        np.float32)
    full = libmha.MultiheadAttention.from_torch(m, device=spec)
    pruned = libmha.MultiheadAttention.from_torch(m, device=spec)
    pruned.prune_heads([1, 6])
    pruned.prune_heads([3])  # original indices, later too
    assert pruned.kept_heads() == [0, 2, 4, 5, 7]
    gates = np.ones(8, np.float32)
    gates[[1, 3, 6]] = 0
    a, _ = full(x, x, x, need_weights=False, head_gates=gates)
    b, _ = pruned(x, x, x, need_weights=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
    _, wb = pruned(x, x, x, average_attn_weights=False)
    assert wb.shape == (2, 5, 6, 6)
    path = tmp_path / "pruned.safetensors"
    pruned.save_safetensors(path, prefix="layer.")
    again = libmha.MultiheadAttention(32, 8, batch_first=True, device=spec)
    again.load_safetensors(path, prefix="layer.")
    assert again.kept_heads() == [0, 2, 4, 5, 7]
    c, _ = again(x, x, x, need_weights=False)
    np.testing.assert_array_equal(b, c)
    for layer in (full, pruned, again):
        layer.close()


def test_bad_heads():
    layer = libmha.MultiheadAttention.from_torch(_module(), device="cpu")
    with pytest.raises(libmha.InvalidArgumentError, match="head 4 does not"):
        layer.prune_heads([4])
    with pytest.raises(libmha.InvalidArgumentError, match="would leave none"):
        layer.prune_heads([0, 1, 2, 3])
    x = np.zeros((1, 2, 16), np.float32)
    with pytest.raises(libmha.ShapeMismatchError, match="head_gates"):
        layer(x, x, x, head_gates=np.ones(5, np.float32))
    layer.close()
