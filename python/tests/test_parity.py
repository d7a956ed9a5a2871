"""Parity with torch.nn.MultiheadAttention: every constructor option and
forward argument, on every device, through NumPy arrays, torch tensors and
libmha.Tensor, fp32 to 1e-4 and fp16 storage to 1e-2 (DESIGN.md)."""
import numpy as np
import pytest
import torch

import libmha
from conftest import FP16_SPECS, SPECS, get_device, random_mha, tolerance

E, H, L, S, N = 8, 2, 5, 4, 2

# Constructor options: every one alone, then all together.
CONFIGS = {
    "default": {},
    "no_bias": {"bias": False},
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True},
    "kdim_vdim": {"kdim": 6, "vdim": 10},
    "batch_first": {"batch_first": True},
    "all": {"add_bias_kv": True, "add_zero_attn": True, "kdim": 6, "vdim": 5,
            "batch_first": True},
}


def _causal(l, s):
    return np.triu(np.ones((l, s), bool), 1)


def _cases(gen):
    """(name, forward kwargs for libmha, for torch, batched): every forward
    argument. Only the last key of batch item 0 is padded, so no row is
    fully masked (where libmha deliberately differs: zeros, not NaN)."""
    kpm = np.zeros((N, S), bool)
    kpm[0, -1] = True
    kpm_f = np.where(kpm, -1e9, 0.0).astype(np.float32)
    mask2 = gen.random((L, S)) < 0.3
    mask2[:, 0] = False
    mask3 = (gen.standard_normal((N * H, L, S)) * 0.5).astype(np.float32)
    causal = _causal(L, S)
    return [
        ("plain", {}, {}, True),
        ("no_weights", {"need_weights": False}, {"need_weights": False}, True),
        ("per_head", {"average_attn_weights": False},
         {"average_attn_weights": False}, True),
        ("kpm_bool", {"key_padding_mask": kpm}, {"key_padding_mask": kpm},
         True),
        ("kpm_float", {"key_padding_mask": kpm_f},
         {"key_padding_mask": kpm_f}, True),
        ("mask_bool_2d", {"attn_mask": mask2}, {"attn_mask": mask2}, True),
        ("mask_float_3d", {"attn_mask": mask3}, {"attn_mask": mask3}, True),
        # torch 1.13 has no is_causal: its reference is the causal mask.
        ("is_causal", {"is_causal": True}, {"attn_mask": causal}, True),
        ("causal_and_mask", {"is_causal": True, "attn_mask": mask3},
         {"attn_mask": np.where(causal, -np.inf, 0).astype(np.float32)
          + mask3}, True),
        ("unbatched", {"key_padding_mask": kpm[0]},
         {"key_padding_mask": kpm[0]}, False),
    ]


def _inputs(gen, cfg, batched):
    kdim, vdim = cfg.get("kdim", E), cfg.get("vdim", E)
    bf = cfg.get("batch_first", False)

    def make(length, feat):
        shape = ((N, length) if bf else (length, N)) if batched else (length,)
        return gen.standard_normal(shape + (feat,)).astype(np.float32)
    return make(L, E), make(S, kdim), make(S, vdim)


def _torch_ref(m, q, k, v, kw):
    t = {key: torch.from_numpy(np.asarray(val)) if isinstance(val, np.ndarray)
         else val for key, val in kw.items()}
    with torch.no_grad():
        out, w = m(torch.from_numpy(q), torch.from_numpy(k),
                   torch.from_numpy(v), **t)
    return out.numpy(), None if w is None else w.numpy()


def _to_kind(x, kind, device):
    if kind == "torch":
        return torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) \
            else x
    if kind == "tensor" and isinstance(x, np.ndarray):
        return libmha.Tensor(x, device)
    return x


def _from_kind(x, kind):
    if x is None:
        return None
    if kind == "torch":
        assert isinstance(x, torch.Tensor)
        return x.numpy()
    if kind == "tensor":
        assert isinstance(x, libmha.Tensor)
        return x.numpy()
    assert isinstance(x, np.ndarray)
    return x


PARAMS = [(s, dt) for s in SPECS for dt in ["float32"]] + \
         [(s, "float16") for s in FP16_SPECS]


@pytest.mark.parametrize("kind", ["numpy", "torch", "tensor"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("spec_dtype", PARAMS,
                         ids=["%s-%s" % p for p in PARAMS])
def test_parity(spec_dtype, config, kind):
    spec, dtype = spec_dtype
    device = get_device(spec)
    cfg = CONFIGS[config]
    m = random_mha(E, H, cfg, seed=len(config))
    layer = libmha.MultiheadAttention.from_torch(m, device, dtype=dtype)
    gen = np.random.default_rng(1)
    tol = tolerance(dtype)
    try:
        for name, kw, tkw, batched in _cases(gen):
            q, k, v = _inputs(gen, cfg, batched)
            ref_out, ref_w = _torch_ref(m, q, k, v, tkw)
            args = [_to_kind(x, kind, device) for x in (q, k, v)]
            kwargs = {key: _to_kind(val, kind, device)
                      for key, val in kw.items()}
            out, w = layer(*args, **kwargs)
            out, w = _from_kind(out, kind), _from_kind(w, kind)
            where = "%s %s %s %s %s" % (spec, dtype, config, kind, name)
            assert out.shape == ref_out.shape, where
            np.testing.assert_allclose(out, ref_out, atol=tol, rtol=0,
                                       err_msg=where)
            if ref_w is None:
                assert w is None, where
            else:
                assert w.shape == ref_w.shape, where
                np.testing.assert_allclose(w, ref_w, atol=tol, rtol=0,
                                           err_msg=where)
    finally:
        layer.close()
