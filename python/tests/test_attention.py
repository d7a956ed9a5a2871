"""libmha.attention (the attention core) against a float64 NumPy reference
written from mha.h's definition, on every device: GQA, both causal
alignments, window, softcap, ALiBi (standard and given slopes), sinks,
float and bool bias, kv_lens, both layouts; q, k, v as views of a fused
QKV buffer; NumPy, torch and libmha.Tensor in and out; fp16; Tensor.view;
errors."""
import numpy as np
import pytest
import torch

import libmha

from conftest import FP16_SPECS, SPECS, get_device, rng
from reference import alibi_slopes, reference


B, L, S, HQ, HKV, D = 2, 5, 9, 4, 2, 8


def inputs(seed=0, L=L, S=S, hq=HQ, hkv=HKV, d=D):
    r = rng(seed)
    q = r.standard_normal((B, L, hq, d)).astype(np.float32)
    k = r.standard_normal((B, S, hkv, d)).astype(np.float32)
    v = r.standard_normal((B, S, hkv, d)).astype(np.float32)
    return q, k, v


_r = rng(7)
CASES = {
    "mha": dict(hkv=HQ),
    "gqa": {},
    "mqa": dict(hkv=1),
    "scale": dict(scale=0.3),
    "causal_top_left": dict(causal="top_left"),
    "causal_true": dict(causal=True),
    "causal_bottom_right": dict(causal="bottom_right"),
    "window": dict(causal="bottom_right", window=3),
    "window_noncausal": dict(window=2),
    "softcap": dict(softcap=2.0),
    "alibi": dict(alibi=True, causal="bottom_right"),
    "alibi_slopes": dict(alibi=_r.uniform(0.1, 1, HQ).astype(np.float32)),
    "sinks": dict(sinks=_r.standard_normal(HQ).astype(np.float32)),
    "bias": dict(bias=_r.standard_normal((1, HQ, L, S)).astype(np.float32)),
    "bias_2d": dict(bias=_r.standard_normal((L, S)).astype(np.float32)),
    "bias_bool": dict(bias=_r.random((B, 1, L, S)) < 0.3),
    "kv_lens": dict(kv_lens=np.array([S, 4]), causal="bottom_right"),
    "kv_lens_zero": dict(kv_lens=[0, 6], sinks=np.zeros(HQ, np.float32)),
    "everything": dict(causal="bottom_right", window=4, softcap=5.0,
                       alibi=True, sinks=np.ones(HQ, np.float32),
                       kv_lens=[7, 9], scale=0.25),
}


def expected(q, k, v, kw):
    ref = dict(kw)
    alibi = ref.pop("alibi", False)
    if alibi is True:
        ref["slopes"] = alibi_slopes(q.shape[2])
    elif alibi is not False:
        ref["slopes"] = alibi
    return reference(q, k, v, **ref)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity(spec, case):
    kw = dict(CASES[case])
    q, k, v = inputs(hkv=kw.pop("hkv", HKV))
    got = libmha.attention(q, k, v, device=get_device(spec), **kw)
    assert got.shape == q.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected(q, k, v, kw), atol=1e-4,
                               rtol=0)


@pytest.mark.parametrize("spec", SPECS)
def test_bhtd_layout_and_torch(spec):
    """[B,H,T,d] torch tensors in give a torch tensor in the same layout."""
    q, k, v = inputs(1)
    kw = dict(causal="bottom_right", kv_lens=[9, 6], window=5)
    tq, tk, tv = (torch.from_numpy(x.transpose(0, 2, 1, 3).copy())
                  for x in (q, k, v))
    got = libmha.attention(tq, tk, tv, layout="bhtd", device=get_device(spec),
              **kw)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    want = expected(q, k, v, kw).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("spec", SPECS)
def test_fused_qkv_views(spec):
    """Q, K and V as views of one [B, T, (Hq + 2 Hkv) d] buffer, the output
    written into a view of a larger tensor, everything on the device."""
    dev = get_device(spec)
    T, W = 6, (HQ + 2 * HKV) * D
    qkv = rng(2).standard_normal((B, T, W)).astype(np.float32)
    base = libmha.Tensor(qkv, dev)
    st = (T * W, W, D, 1)
    q = base.view(0, (B, T, HQ, D), st)
    k = base.view(HQ * D, (B, T, HKV, D), st)
    v = base.view((HQ + HKV) * D, (B, T, HKV, D), st)
    lens = libmha.Tensor(np.array([T, 3], np.int32), dev)
    assert lens.dtype == np.int32
    out_base = libmha.Tensor.empty((B, T, HQ, D + 2), "float32", dev)
    out = out_base.view(1, (B, T, HQ, D), (T * HQ * (D + 2), HQ * (D + 2),
                                          D + 2, 1))
    got = libmha.attention(q, k, v, causal=True, kv_lens=lens, out=out)
    assert got is out
    nq, nk, nv = np.split(qkv.reshape(B, T, HQ + 2 * HKV, D), [HQ, HQ + HKV],
                          axis=2)
    want = reference(nq, nk, nv, causal="top_left", kv_lens=[T, 3])
    np.testing.assert_allclose(out.numpy(), want, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(k.numpy(), nk)
    # a Tensor result when q is a view and no out is given
    res = libmha.attention(q, k, v)
    assert isinstance(res, libmha.Tensor) and res.shape == (B, T, HQ, D)
    np.testing.assert_allclose(res.numpy(), reference(nq, nk, nv),
                               atol=1e-4, rtol=0)
    base.close()
    assert q.closed and k.closed and v.closed


@pytest.mark.parametrize("spec", sorted(set(FP16_SPECS) | {"cpu:0"}))
def test_float16(spec):
    q, k, v = inputs(3)
    kw = dict(causal="bottom_right", softcap=4.0)
    got = libmha.attention(q.astype(np.float16), k.astype(np.float16),
              v.astype(np.float16), device=get_device(spec), **kw)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, expected(q, k, v, kw), atol=1e-2,
                               rtol=0)


def test_tensor_views_and_dtypes():
    dev = get_device("cpu:0")
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    t = libmha.Tensor(a, dev)
    row = t.view(6, (6,))
    np.testing.assert_array_equal(row.numpy(), a[1])
    col = t.view(2, (4,), (6,))
    np.testing.assert_array_equal(col.numpy(), a[:, 2])
    sub = col.view(8, (2,), (12,))  # offsets index the root's storage
    np.testing.assert_array_equal(sub.numpy(), [8, 20])
    bc = t.view(3, (2, 3), (0, 1))
    np.testing.assert_array_equal(bc.numpy(), [[3, 4, 5], [3, 4, 5]])
    row.upload(np.full(6, -1, np.float32))  # row-major views upload
    np.testing.assert_array_equal(t.numpy()[1], -1)
    i = libmha.Tensor(np.array([1, 2, 3]), dev)  # int64 becomes int32
    assert i.dtype == np.int32
    np.testing.assert_array_equal(i.numpy(), [1, 2, 3])
    with pytest.raises(libmha.SizeOverflowError):
        libmha.Tensor(np.array([2 ** 40]), dev)
    h = libmha.Tensor(np.ones(3, np.float16), dev)
    assert h.numpy().dtype == np.float16
    with pytest.raises(libmha.InvalidArgumentError,
                       match="mha_tensor_view: the view reaches element 24"):
        t.view(10, (15,))
    t.close()
    assert row.closed and sub.closed and bc.closed
    with pytest.raises(libmha.BadStateError, match="the tensor is closed"):
        col.numpy()


def test_errors():
    dev = get_device("cpu:0")
    q, k, v = inputs()
    with pytest.raises(libmha.ShapeMismatchError,
                       match=r"mha_attention: v has shape \[2,9,2,8\]; "
                             r"expected \[2,9,2,4\]"):
        libmha.attention(q, k[..., :4], v, device=dev)
    with pytest.raises(libmha.ShapeMismatchError, match="multiple of"):
        k3 = k[:, :, :1].repeat(3, 2)
        libmha.attention(q, k3, k3, device=dev)
    with pytest.raises(libmha.DtypeMismatchError,
                       match="k has dtype f16; expected q's, f32"):
        libmha.attention(q, k.astype(np.float16), v, device=dev)
    with pytest.raises(libmha.InvalidArgumentError,
                       match=r"kv_lens\[1\] is 10; expected 0 to 9"):
        libmha.attention(q, k, v, device=dev, kv_lens=[1, 10])
    with pytest.raises(libmha.ShapeMismatchError, match="sinks has shape"):
        libmha.attention(q, k, v, device=dev, sinks=np.zeros(3))
    with pytest.raises(libmha.InvalidArgumentError, match="window is -1"):
        libmha.attention(q, k, v, device=dev, window=-1)
    with pytest.raises(libmha.InvalidArgumentError, match="causal 'left'"):
        libmha.attention(q, k, v, device=dev, causal="left")
    with pytest.raises(libmha.InvalidArgumentError, match="layout 'bshd'"):
        libmha.attention(q, k, v, device=dev, layout="bshd")
    other = libmha.Device("cpu")
    with pytest.raises(libmha.InvalidArgumentError, match="2 different"):
        libmha.attention(libmha.Tensor(q, other), k, v, device=dev)
    other.close()
