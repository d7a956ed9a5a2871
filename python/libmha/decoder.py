"""decoder: libmha.KVCache (mha_kv_cache) and libmha.DecoderAttention
(mha_decoder), a decoder model's self-attention layer (Hugging Face's
LlamaAttention and relatives) over a KV cache: prefill and decode are the
same call.

The cache and the layer live on one Device; x and the output are NumPy
arrays, torch tensors or libmha.Tensors as for MultiheadAttention. A
prefill from empty sequences trains (``save_for_backward``, ``backward``,
``grads``, libmha.AdamW; training.py).
"""
import ctypes

import numpy as np

from . import _capi
from .attention import _numpy
from .device import resolve
from ._handle import DeviceChild
from .errors import InvalidArgumentError, MissingWeightError
from .layer import IncompatibleKeys, _dtype_code, _torch_tensor
from .tensor import Tensor, shape_array
from .training import Trainable, _returned


def _on_device(x, dev, temps, dtype=None):
    """x as a Tensor on dev (a temporary one, added to temps, for host
    data)."""
    if x is None or isinstance(x, Tensor):
        return x
    t = Tensor(_numpy(x, dtype), dev)
    temps.append(t)
    return t


class KVCache(DeviceChild):
    """The keys and values of num_sequences sequences of up to capacity
    tokens each, on a device (mha_kv_cache):
    ``KVCache(capacity, num_kv_heads, head_dim, num_sequences=1,
    dtype="float32", device=None, window=0)``; dtype "float16" halves what
    a decode step reads. window W > 0 makes a ring for a sliding-window
    layer (a DecoderAttention of window 1 to W): its memory stays capacity
    tokens (at least W) however many pass through, the oldest dropped.
    DecoderAttention's forward appends to it; ``append(seq, key, value)``
    appends keys and values computed elsewhere ([T, num_kv_heads,
    head_dim]). ``length(seq)`` (a ring counts the dropped tokens too),
    ``truncate(seq, length)`` (rollback, e.g. of rejected speculative
    tokens; a ring only back to the tokens it holds) and ``clear()``. Past
    capacity is LimitReachedError and changes nothing."""

    _noun = "KV cache"

    def __init__(self, capacity, num_kv_heads, head_dim, num_sequences=1,
                 dtype="float32", device=None, window=0):
        self.device = dev = resolve(device)
        self.capacity, self.num_sequences = int(capacity), int(num_sequences)
        self.num_kv_heads, self.head_dim = int(num_kv_heads), int(head_dim)
        self.window = int(window)
        code = _dtype_code(dtype)
        self.dtype = "float16" if code == _capi.F16 else "float32"
        cfg = _capi.KVCacheConfig()
        lib = dev._lib
        with dev.lock:
            dev.check(lib.mha_kv_cache_config_init_sized(ctypes.byref(cfg),
                                                         ctypes.sizeof(cfg)))
            cfg.capacity, cfg.num_sequences = self.capacity, self.num_sequences
            cfg.num_kv_heads, cfg.head_dim = self.num_kv_heads, self.head_dim
            cfg.dtype = code
            cfg.window = self.window
            self._own(lib.mha_kv_cache_create, "KVCache", ctypes.byref(cfg))

    def append(self, seq, key, value):
        """Appends T tokens' keys and values ([T, num_kv_heads, head_dim]:
        arrays, torch tensors or Tensors on the cache's device) to
        sequence seq."""
        dev, temps = self.device, []
        try:
            k = _on_device(key, dev, temps)
            v = _on_device(value, dev, temps)
            with dev.lock:
                fn = "KVCache.append"
                dev.check(dev._lib.mha_kv_cache_append(
                    self.handle(fn), int(seq), k.handle(fn), v.handle(fn)))
        finally:
            for t in temps:
                t.close()

    def length(self, seq=0):
        """Tokens held by sequence seq."""
        dev = self.device
        n = ctypes.c_int64()
        with dev.lock:
            dev.check(dev._lib.mha_kv_cache_length(
                self.handle("KVCache.length"), int(seq), ctypes.byref(n)))
        return n.value

    def truncate(self, seq, length):
        """Keeps the first length tokens of sequence seq (length at most
        the current one)."""
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_kv_cache_truncate(
                self.handle("KVCache.truncate"), int(seq), int(length)))

    def clear(self):
        """Empties every sequence."""
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_kv_cache_clear(
                self.handle("KVCache.clear")))

    def _destroy(self, lib, ptr):
        return lib.mha_kv_cache_destroy(ptr)

    def __repr__(self):
        return ("libmha.KVCache(capacity=%d, num_kv_heads=%d, head_dim=%d, "
                "num_sequences=%d, dtype=%r, device=%r%s)" % (
                    self.capacity, self.num_kv_heads, self.head_dim,
                    self.num_sequences, self.dtype, self.device.spec,
                    ", closed" if self.closed else ""))


class DecoderAttention(Trainable, DeviceChild):
    """A decoder model's self-attention (HF LlamaAttention, Mistral, Qwen2,
    Gemma 2, gpt-oss) on a libmha device (mha_decoder).

    ``DecoderAttention(embed_dim, num_heads, num_kv_heads=None,
    head_dim=None, rope="neox", rope_dims=0, rope_theta=10000.0,
    rope_scaling=1.0, window=0, alibi=False, softcap=0.0, sinks=False,
    qkv_bias=False, o_bias=False, scale=None, device=None)``: num_kv_heads
    None is num_heads (GQA/MQA when fewer), head_dim None is embed_dim //
    num_heads; rope "neox" (HF's rotate_half), "gptj" (interleaved) or
    None, rotating the first rope_dims features (0: all) at positions
    divided by rope_scaling; window, softcap, alibi and sinks as in
    libmha.attention (sinks=True: a learned "sinks" weight [num_heads]);
    scale None is 1/sqrt(head_dim).

    Weights under Hugging Face's names (``weight_names()``), set by
    ``load_state_dict(state_dict, prefix="")`` (e.g. a whole model's
    state_dict with prefix "model.layers.7.self_attn.") or
    ``load_safetensors(path, prefix="")``. ``forward(x, positions=None,
    cache=cache)`` (also the call) runs new tokens through the layer;
    with ``save_for_backward=True`` a prefill of empty sequences is a
    training forward, and ``backward(grad_output)`` writes ``grads``
    (libmha.Gradients under the weights' names) for ``libmha.AdamW``."""

    _noun = "decoder layer"
    _c_gradients = "mha_decoder_gradients_create"
    _c_adamw = "mha_decoder_adamw_create"

    def __init__(self, embed_dim, num_heads, num_kv_heads=None,
                 head_dim=None, rope="neox", rope_dims=0, rope_theta=10000.0,
                 rope_scaling=1.0, window=0, alibi=False, softcap=0.0,
                 sinks=False, qkv_bias=False, o_bias=False, scale=None,
                 device=None):
        self.device = dev = resolve(device)
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.num_kv_heads = int(num_kv_heads or num_heads)
        self.head_dim = int(head_dim or self.embed_dim // self.num_heads)
        self.qkv_bias, self.o_bias = bool(qkv_bias), bool(o_bias)
        self.sinks = bool(sinks)
        try:
            style = _capi.ROPE_STYLES[rope]
        except (KeyError, TypeError):
            raise InvalidArgumentError(
                "DecoderAttention: rope %r; expected \"neox\", \"gptj\" or "
                "None" % (rope,), 1) from None
        cfg = _capi.DecoderConfig()
        lib = dev._lib
        with dev.lock:
            dev.check(lib.mha_decoder_config_init_sized(
                ctypes.byref(cfg), ctypes.sizeof(cfg), self.embed_dim,
                self.num_heads))
            cfg.num_kv_heads, cfg.head_dim = self.num_kv_heads, self.head_dim
            cfg.rope_style, cfg.rope_dims = style, int(rope_dims)
            cfg.rope_theta, cfg.rope_scaling = rope_theta, rope_scaling
            cfg.window, cfg.alibi = int(window), bool(alibi)
            cfg.softcap, cfg.sinks = float(softcap), self.sinks
            cfg.qkv_bias, cfg.o_bias = self.qkv_bias, self.o_bias
            cfg.scale = 0.0 if scale is None else float(scale)
            self._own(lib.mha_decoder_create, "DecoderAttention",
                      ctypes.byref(cfg))

    def weight_names(self):
        """The weights this configuration needs, Hugging Face's names."""
        names = ["q_proj.weight", "k_proj.weight", "v_proj.weight",
                 "o_proj.weight"]
        if self.qkv_bias:
            names += ["q_proj.bias", "k_proj.bias", "v_proj.bias"]
        if self.o_bias:
            names.append("o_proj.bias")
        if self.sinks:
            names.append("sinks")
        return names

    def set_weight(self, name, value):
        """Sets one weight (NumPy array or torch tensor, HF's layout) by
        its name (mha_decoder_set_weight)."""
        a = _numpy(value, np.float32)
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_decoder_set_weight(
                self.handle("DecoderAttention.set_weight"), name.encode(),
                a.ctypes.data, a.ndim, shape_array(a.shape)))

    def load_state_dict(self, state_dict, prefix="", strict=True):
        """Sets every needed weight from state_dict[prefix + name]; other
        keys are ignored when they do not start with prefix (so a whole
        model's state_dict loads one layer), else reported. strict: a
        missing weight is MissingWeightError. Returns (missing_keys,
        unexpected_keys)."""
        needed = self.weight_names()
        ours = {k[len(prefix):]: v for k, v in state_dict.items()
                if k.startswith(prefix)}
        missing = [prefix + n for n in needed if n not in ours]
        unexpected = [prefix + n for n in ours if n not in needed]
        if strict and missing:
            raise MissingWeightError(
                "DecoderAttention.load_state_dict: missing %s"
                % ", ".join(missing), 8)
        for name in needed:
            if name in ours:
                self.set_weight(name, ours[name])
        return IncompatibleKeys(missing, unexpected)

    def load_safetensors(self, path, prefix=""):
        """Loads every needed weight from a .safetensors file, each name
        prefixed by prefix, e.g. "model.layers.7.self_attn."
        (mha_decoder_load_safetensors; F32, F16, BF16 or F64)."""
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_decoder_load_safetensors(
                self.handle("DecoderAttention.load_safetensors"),
                str(path).encode(), (prefix or "").encode()))

    def kept_heads(self):
        """The original indices of the query heads the layer keeps (all of
        range(num_heads) until ``prune_heads``), ascending."""
        return self._kept_heads("mha_decoder_kept_heads",
                                "DecoderAttention.kept_heads", self.num_heads)

    def prune_heads(self, heads):
        """Removes query heads for good (mha_decoder_prune_heads), named by
        their original index; a grouped-query layer prunes whole kv groups
        (num_heads // num_kv_heads heads sharing a kv head), which go with
        their kv head, so a KVCache for the pruned layer holds the kept kv
        heads."""
        self._prune_heads("mha_decoder_prune_heads",
                          "DecoderAttention.prune_heads", heads)

    def __call__(self, x, positions=None, cache=None,
                 save_for_backward=False, head_gates=None):
        """Runs new tokens x [B, T, embed_dim] of sequences 0 .. B-1 of
        cache: projects them, rotates q and k at positions ([B, T] ints;
        None: each sequence's length + t), appends k and v to the cache,
        attends over each sequence's cached prefix and projects the
        result. Prefill (T > 1) and decode (T = 1) are the same call.
        Returns [B, T, embed_dim] float32 like x: NumPy, torch or a
        libmha.Tensor on the layer's device. On failure the cache is
        unchanged.

        head_gates [num_heads] or [B, num_heads] (the kept heads): each
        head's attention output is multiplied by its gate before o_proj
        (mha_decoder_forward_args.head_gates).

        save_for_backward: a training forward, for ``backward``: sequences
        0 .. B-1 must be empty in the cache (``clear()`` it; an f32 or f16
        cache without a window); the layer keeps x on the device until
        its next training forward, and a Tensor x must stay unchanged
        until then."""
        if not isinstance(cache, KVCache):
            raise InvalidArgumentError(
                "DecoderAttention.forward: cache must be a libmha.KVCache, "
                "not %s" % type(cache).__name__, 1)
        dev, temps, kept = self.device, [], []
        try:
            tx = _on_device(x, dev, kept, np.float32)
            tg = _on_device(head_gates, dev, kept, np.float32)
            tp = _on_device(positions, dev, temps, np.int32)
            out = Tensor.empty(tx.shape[:-1] + (self.embed_dim,), np.float32,
                               dev)
            if not isinstance(x, Tensor):
                temps.append(out)
            a = _capi.DecoderForwardArgs()
            lib = dev._lib
            lib.mha_decoder_forward_args_init_sized(ctypes.byref(a),
                                                    ctypes.sizeof(a))
            fn = "DecoderAttention.forward"
            a.x, a.output = tx.handle(fn), out.handle(fn)
            a.positions = tp.handle(fn) if tp is not None else None
            a.cache = cache.handle(fn)
            a.head_gates = tg.handle(fn) if tg is not None else None
            a.save_for_backward = bool(save_for_backward)
            with dev.lock:
                dev.check(lib.mha_decoder_forward(self.handle(fn),
                                                  ctypes.byref(a)))
            if save_for_backward:
                self._save((tx, tg), kept)
                kept = []
            if isinstance(x, Tensor):
                return out
            result = out.numpy()
            if _torch_tensor(x):
                import torch
                return torch.from_numpy(result).to(device=x.device)
            return result
        finally:
            for t in temps + kept:
                t.close()

    forward = __call__

    def backward(self, grad_output, accumulate=False, grads=None,
                 return_input_grads=False, return_gates_grad=False):
        """Backpropagates grad_output (dL/d output, [B, T, embed_dim])
        through the last training forward (mha_decoder_backward) into
        grads (a libmha.Gradients of this layer; None: ``self.grads``),
        overwriting them or, with accumulate, adding into them. Returns
        grads; with return_input_grads also dL/dx, with return_gates_grad
        also dL/d head_gates (written, not accumulated; a training forward
        with head_gates), of grad_output's kind. BadStateError without a
        training forward or after the weights changed since it."""
        dev, temps, fn = self.device, [], "DecoderAttention.backward"
        g = self.grads if grads is None else grads
        try:
            dy, result = self._backward_outputs(grad_output, temps)
            a = _capi.DecoderBackwardArgs()
            lib = dev._lib
            lib.mha_decoder_backward_args_init_sized(ctypes.byref(a),
                                                     ctypes.sizeof(a))
            a.grad_output, a.grads = dy.handle(fn), g.handle(fn)
            a.accumulate = bool(accumulate)
            dx = result(self._saved_shape(0)) if return_input_grads else None
            a.grad_x = dx.handle(fn) if dx is not None else None
            dg = result(self._saved_shape(1)) if return_gates_grad else None
            a.grad_head_gates = dg.handle(fn) if dg is not None else None
            with dev.lock:
                dev.check(lib.mha_decoder_backward(self.handle(fn),
                                                   ctypes.byref(a)))
            extra = [_returned(t, grad_output) for t in (dx, dg)
                     if t is not None]
            return (g, *extra) if extra else g
        finally:
            for t in temps:
                t.close()

    def _destroy(self, lib, ptr):
        return lib.mha_decoder_destroy(ptr)

    def __repr__(self):
        return ("libmha.DecoderAttention(embed_dim=%d, num_heads=%d, "
                "num_kv_heads=%d, head_dim=%d, device=%r%s)" % (
                    self.embed_dim, self.num_heads, self.num_kv_heads,
                    self.head_dim, self.device.spec,
                    ", closed" if self.closed else ""))
