"""libmha.torch.replace_attention: a 2-layer nn.TransformerEncoder, with a
key padding mask and a causal mask, gives the original model's output to
1e-4 on every device; training mode and gradients are refused."""
import copy

import numpy as np
import pytest
import torch

import libmha
import libmha.torch
from conftest import SPECS, get_device

E, H, L, N = 16, 4, 6, 3


def _encoder(batch_first):
    torch.manual_seed(3)
    layer = torch.nn.TransformerEncoderLayer(E, H, dim_feedforward=32,
                                             dropout=0.1,
                                             batch_first=batch_first)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.MultiheadAttention):
                m.in_proj_bias.normal_(0, 0.3)
                m.out_proj.bias.normal_(0, 0.3)
    return model.eval()


def _inputs(batch_first):
    torch.manual_seed(4)
    x = torch.randn((N, L, E) if batch_first else (L, N, E))
    pad = torch.zeros(N, L, dtype=torch.bool)
    pad[0, -2:] = True
    pad[2, -1] = True
    causal = torch.triu(torch.full((L, L), float("-inf")), 1)
    return x, pad, causal


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("spec", SPECS)
def test_encoder_matches(spec, batch_first):
    model = _encoder(batch_first)
    x, pad, causal = _inputs(batch_first)
    with torch.no_grad():
        want = model(x, mask=causal, src_key_padding_mask=pad)
        swapped = libmha.torch.replace_attention(copy.deepcopy(model),
                                                 get_device(spec))
        attns = [m for m in swapped.modules()
                 if isinstance(m, libmha.torch.Attention)]
        assert len(attns) == 2
        assert not any(isinstance(m, torch.nn.MultiheadAttention)
                       for m in swapped.modules())
        got = swapped(x, mask=causal, src_key_padding_mask=pad)
        # padding alone: torch's fused fast path on the original
        want_pad = model(x, src_key_padding_mask=pad)
        got_pad = swapped(x, src_key_padding_mask=pad)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=0)
    # torch's fast path zeroes padded positions' outputs; compare the rest
    keep = ~pad if batch_first else ~pad.T
    np.testing.assert_allclose(got_pad[keep].numpy(), want_pad[keep].numpy(),
                               atol=1e-4, rtol=0)


def test_training_mode_refused():
    model = _encoder(True).train()
    with pytest.raises(libmha.UnsupportedError, match="model.eval"):
        libmha.torch.replace_attention(model, "cpu")


def test_gradients_refused():
    model = libmha.torch.replace_attention(_encoder(True), "cpu")
    x = torch.randn(N, L, E, requires_grad=True)
    with pytest.raises(libmha.UnsupportedError, match="no autograd"):
        model(x)
    with torch.no_grad():
        assert model(x).shape == (N, L, E)
