"""Errors raise the libmha.Error subclass of their status with libmha's
message; closed objects refuse calls; 10,000 create/forward/destroy rounds
keep the process's memory flat; load_safetensors and load_state_dict."""
import os

import numpy as np
import pytest
import torch

import libmha

from conftest import write_safetensors

E, H = 8, 2


def _layer(device, **kw):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(E, H, **kw).eval()
    return m, libmha.MultiheadAttention.from_torch(m, device)


def test_bad_shape(device):
    _, layer = _layer(device)
    q = np.zeros((3, 2, E), np.float32)
    k = np.zeros((4, 2, E + 1), np.float32)
    with pytest.raises(libmha.ShapeMismatchError,
                       match=r"key has shape \[4,2,9\]; expected \[4,2,8\]"):
        layer(q, k, k)
    with pytest.raises(libmha.ShapeMismatchError, match="key_padding_mask"):
        layer(q, q, q, key_padding_mask=np.zeros((2, 5), bool))
    t = libmha.Tensor(k, device)
    with pytest.raises(libmha.ShapeMismatchError,
                       match=r"mha_layer_forward: key has shape \[4,2,9\]"):
        layer(libmha.Tensor(q, device), t, t)
    with pytest.raises(libmha.ShapeMismatchError, match="Tensor.upload"):
        t.upload(q)
    # the error is also a ValueError, and carries its status
    with pytest.raises(ValueError) as info:
        layer(q, k, k)
    assert info.value.status_name == "MHA_SHAPE_MISMATCH"


def test_missing_weight(device):
    layer = libmha.MultiheadAttention(E, H, device=device)
    x = np.zeros((3, E), np.float32)
    with pytest.raises(libmha.MissingWeightError,
                       match='mha_layer_forward_host: weight "in_proj_weight" '
                             'was not set'):
        layer(x, x, x)
    m, _ = _layer(device)
    sd = m.state_dict()
    del sd["out_proj.bias"]
    with pytest.raises(libmha.MissingWeightError, match="out_proj.bias"):
        layer.load_state_dict(sd)
    missing, _ = layer.load_state_dict(sd, strict=False)
    assert missing == ["out_proj.bias"]
    with pytest.raises(libmha.MissingWeightError, match="out_proj.bias"):
        layer(x, x, x)


def test_bad_weight_name_and_config():
    layer = libmha.MultiheadAttention(E, H, device="cpu")
    with pytest.raises(libmha.NotFoundError,
                       match='"nope" is not an nn.MultiheadAttention weight'):
        layer.set_weight("nope", np.zeros(3, np.float32))
    with pytest.raises(libmha.InvalidArgumentError,
                       match="embed_dim 8 is not divisible by num_heads 3"):
        libmha.MultiheadAttention(E, 3, device="cpu")
    with pytest.raises(libmha.UnsupportedError, match="dropout 0.1"):
        libmha.MultiheadAttention(E, H, dropout=0.1, device="cpu")


def test_unknown_device():
    with pytest.raises(libmha.InvalidArgumentError,
                       match='spec "nosuch" is not a device name'):
        libmha.Device("nosuch")
    with pytest.raises(libmha.NoDeviceError,
                       match='"cpu:7" names no device'):
        libmha.Device("cpu:7")


def test_closed_objects():
    dev = libmha.Device("cpu")
    _, layer = _layer(dev)
    x = np.ones((2, E), np.float32)
    t = libmha.Tensor(x, dev)
    layer.close()
    layer.close()  # twice does nothing
    with pytest.raises(libmha.BadStateError, match="the layer is closed"):
        layer(x, x, x)
    _, layer2 = _layer(dev)
    dev.close()  # closes its layers and tensors first
    assert layer2.closed and t.closed
    with pytest.raises(libmha.BadStateError, match="closed"):
        layer2(x, x, x)
    with pytest.raises(libmha.BadStateError, match="the tensor is closed"):
        t.numpy()
    with pytest.raises(libmha.BadStateError, match="the device is closed"):
        libmha.Tensor(x, dev)


def test_load_safetensors(tmp_path, device):
    m, want = _layer(device)
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"enc.attn." + k: v.numpy()
                              for k, v in m.state_dict().items()})
    layer = libmha.MultiheadAttention(E, H, device=device)
    layer.load_safetensors(path, prefix="enc.attn.")
    x = np.random.default_rng(0).standard_normal((3, 2, E)).astype(np.float32)
    np.testing.assert_allclose(layer(x, x, x)[0], want(x, x, x)[0],
                               atol=1e-6, rtol=0)
    with pytest.raises(libmha.MissingWeightError,
                       match="no tensor \"wrong.in_proj_weight\""):
        layer.load_safetensors(path, prefix="wrong.")
    with pytest.raises(libmha.InputOutputError, match="cannot be opened"):
        layer.load_safetensors(tmp_path / "absent.safetensors")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_create_forward_destroy_keeps_rss_flat():
    """10,000 rounds of a tiny layer on the CPU: after a warm-up of 1,000
    (allocator pools, plan caches), the next 9,000 add less than 1 MiB;
    one leaked plan or weight block per round would add several MiB."""
    # one thread: no worker hand-offs, which a loaded machine makes slow
    dev = libmha.Device("cpu", threads=1)
    w = {"in_proj_weight": np.tile(np.eye(4, dtype=np.float32), (3, 1)),
         "in_proj_bias": np.zeros(12, np.float32),
         "out_proj.weight": np.eye(4, dtype=np.float32),
         "out_proj.bias": np.zeros(4, np.float32)}
    x = np.ones((2, 4), np.float32)

    def rounds(n):
        for _ in range(n):
            layer = libmha.MultiheadAttention(4, 1, device=dev)
            layer.load_state_dict(w)
            out, _ = layer(x, x, x)
            layer.close()
        assert out.shape == (2, 4)
        np.testing.assert_allclose(out, x, atol=1e-6)

    rounds(1000)
    before = _rss_bytes()
    rounds(9000)
    grown = _rss_bytes() - before
    dev.close()
    assert grown < 1 << 20, "RSS grew by %d bytes over 9,000 rounds" % grown
