"""attention: libmha.attention, the attention core over already-projected
heads (mha_attention), with the options of decoder models: GQA/MQA,
bottom-right causal alignment, sliding window, softcap, ALiBi, sinks, an
additive bias and per-sequence key lengths.

Like MultiheadAttention's forward: NumPy arrays in give a NumPy array out,
torch tensors a torch tensor, libmha.Tensors (or their views) a
libmha.Tensor on their device, nothing copied through the host.
"""
import ctypes

import numpy as np

from . import _capi
from .device import resolve
from .errors import InvalidArgumentError
from .layer import _torch_tensor
from .tensor import Tensor


def _numpy(x, dtype=None):
    """A C-contiguous NumPy array for a host input (torch tensors through
    the CPU; float64 and bfloat16 as float32, float16 kept)."""
    if _torch_tensor(x):
        x = x.detach().cpu()
        if str(x.dtype) not in ("torch.float16", "torch.bool", "torch.int32",
                                "torch.int64"):
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if dtype is None:
        dtype = np.float16 if a.dtype == np.float16 else np.float32
    return np.ascontiguousarray(a, dtype=dtype)


def _option(table, value, name):
    try:
        return table[value]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            "attention: %s %r; expected one of %s" % (
                name, value, ", ".join(repr(k) for k in table)), 1) from None


def _device(device, tensors):
    """The device of the call: that of the Tensor arguments (which must
    agree with each other and with device), else device resolved."""
    devs = {id(t.device): t.device for t in tensors if isinstance(t, Tensor)}
    if device is not None:
        dev = resolve(device)
        devs.setdefault(id(dev), dev)
    if len(devs) > 1:
        raise InvalidArgumentError(
            "attention: the tensors and device name %d different devices; "
            "libmha attends on one" % len(devs), 1)
    return next(iter(devs.values())) if devs else resolve(None)


def attention(q, k, v, *, device=None, scale=None, causal=None, window=0,
              softcap=0.0, alibi=False, sinks=None, bias=None, kv_lens=None,
              layout="bthd", out=None):
    """Attention over projected heads (mha_attention), PyTorch's
    scaled_dot_product_attention with the options of decoder models.

    q [B, L, Hq, d], k and v [B, S, Hkv, d] (layout="bthd", the default;
    layout="bhtd": [B, H, T, d]), float32 or float16; Hq a multiple of
    Hkv (GQA, MQA); d 1 to 256. scale: None is 1/sqrt(d). causal: None,
    True or "top_left" (key j <= i, SDPA's is_causal), "bottom_right" (j <=
    i + len - L: the last query sees the last key, for decode and chunked
    prefill). window: sliding window W, query p sees p - W < j <= p (0:
    none). softcap: c * tanh(s / c) on the scores (0: none). alibi: True
    for the standard slopes of Hq heads, or your slopes [Hq]. sinks: a
    logit per head [Hq] in the softmax's denominator (gpt-oss). bias:
    added to the scores, broadcastable to [B, Hq, L, S]; a bool bias masks
    where True (the opposite of SDPA's bool attn_mask). kv_lens: keys per
    sequence [B] (int), keys past it are never read. out: a libmha.Tensor
    (or view) to write into, else one is made.

    Returns the output in q's shape and dtype: a NumPy array for NumPy
    inputs, a torch tensor for torch tensors, a libmha.Tensor for
    libmha.Tensors (any argument may be a Tensor on the same device;
    device then defaults to theirs). Errors are libmha's, with its message
    (UnsupportedError where the device's backend does not run the core)."""
    args = (q, k, v, sinks, bias, kv_lens, alibi, out)
    dev = _device(device, args)
    temps = []

    def on_device(x, dtype=None):
        if x is None or isinstance(x, Tensor):
            return x
        t = Tensor(_numpy(x, dtype), dev)
        temps.append(t)
        return t

    try:
        a = _capi.AttentionArgs()
        lib = dev._lib
        lib.mha_attention_args_init_sized(ctypes.byref(a), ctypes.sizeof(a))
        tq, tk, tv = on_device(q), on_device(k), on_device(v)
        a.layout = _option(_capi.LAYOUTS, layout, "layout")
        a.causal = _option(_capi.CAUSALS, causal, "causal")
        a.scale = 0.0 if scale is None else float(scale)
        a.window, a.softcap = int(window), float(softcap)
        if alibi is True or alibi is False:
            a.alibi = int(alibi)
            slopes = None
        else:
            slopes = on_device(alibi, np.float32)
        ts, tb = on_device(sinks, np.float32), on_device(bias, _bias_dtype(
            bias))
        tl = on_device(kv_lens, np.int32)
        to = out if out is not None else Tensor.empty(tq.shape, tq.dtype, dev)
        if out is None and not isinstance(q, Tensor):
            temps.append(to)
        fn = "attention"
        a.q, a.k, a.v, a.out = (tq.handle(fn), tk.handle(fn), tv.handle(fn),
                                to.handle(fn))
        for field, t in (("alibi_slopes", slopes), ("sinks", ts),
                         ("bias", tb), ("kv_lens", tl)):
            setattr(a, field, t.handle(fn) if t is not None else None)
        with dev.lock:
            dev.check(lib.mha_attention(dev.handle(fn), ctypes.byref(a)))
        if isinstance(q, Tensor) or out is not None:
            return to
        result = to.numpy()
        if _torch_tensor(q):
            import torch
            return torch.from_numpy(result).to(device=q.device, dtype=q.dtype)
        return result
    finally:
        for t in temps:
            t.close()


def _bias_dtype(bias):
    """A bias keeps bool (masks); everything else is float32."""
    if bias is None or isinstance(bias, Tensor):
        return None
    is_bool = (str(bias.dtype) == "torch.bool" if _torch_tensor(bias)
               else np.asarray(bias).dtype == np.bool_)
    return np.bool_ if is_bool else np.float32
