"""Device.profile and Device.variants on every device: a forward's nodes
by name with non-negative times (the device's clock on GPUs), a training
backward's nodes after them, reading without profiling refused; the
kernel variants a GPU device has (none on the CPU backend)."""
import numpy as np
import pytest

import libmha

E, H, L, N = 8, 2, 4, 2


def _layer(device):
    r = np.random.default_rng(0)
    layer = libmha.MultiheadAttention(E, H, device=device)
    layer.load_state_dict({
        "in_proj_weight": r.standard_normal((3 * E, E)),
        "in_proj_bias": r.standard_normal(3 * E),
        "out_proj.weight": r.standard_normal((E, E)),
        "out_proj.bias": r.standard_normal(E)})
    return layer


def test_profile_names_each_node(device):
    layer = _layer(device)
    x = np.ones((L, N, E), np.float32)
    with device.profile() as nodes:
        layer(x, x, x, need_weights=False)
    assert nodes, "no node was timed"
    ops = [n.op for n in nodes]
    assert ops[0] == "projection" and ops[-1] == "projection", ops
    gpu = device.info["backend"] != "cpu"
    for n in nodes:
        assert isinstance(n.op, str) and n.op
        assert n.ms >= 0 and n.device_clock == gpu, n
        assert n.variant is None or isinstance(n.variant, str)
    # a training forward and its backward add their own nodes
    device.profile_start()
    layer(x, x, x, need_weights=False, save_for_backward=True)
    forward = len(device.profile_read())
    layer.backward(x)
    assert len(device.profile_read()) > forward
    device.profile_stop()
    with pytest.raises(libmha.BadStateError, match="profile_start"):
        device.profile_read()
    device.profile_stop()  # nothing when not profiling


def test_variants(device):
    for kind in ("matmul", "attention"):
        names = device.variants(kind)
        assert all(isinstance(n, str) and n for n in names)
        assert len(set(names)) == len(names)
        if device.info["backend"] == "cpu":
            assert names == []
        else:
            assert names, "%s has no %s variant" % (device.spec, kind)
    with pytest.raises(libmha.InvalidArgumentError, match="neither"):
        device.variants("softmax")
