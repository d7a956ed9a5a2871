"""layer: libmha.MultiheadAttention, torch.nn.MultiheadAttention's
constructor and forward over one mha_layer.

NumPy arrays in give NumPy arrays out (through mha_layer_forward_host),
torch tensors in give torch tensors out, libmha.Tensor in gives
libmha.Tensor out on the same device (mha_layer_forward, nothing copied to
the host). Every check of shapes, dtypes and weights is libmha's own, so
errors carry its messages. Training (``save_for_backward``, ``backward``,
``grads``, libmha.AdamW) is in training.py.
"""
import collections
import ctypes
import os
import sys
import tempfile

import numpy as np

from . import _capi
from ._safetensors import read as read_safetensors
from .device import resolve
from ._handle import DeviceChild
from .errors import InvalidArgumentError, MissingWeightError
from .tensor import Tensor, c_dtype, shape_array
from .training import Trainable, _returned

IncompatibleKeys = collections.namedtuple("IncompatibleKeys",
                                          "missing_keys unexpected_keys")


def _torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _host(x, mask=False):
    """A C-contiguous NumPy array for an input: float32 for data; bool or
    float32 for a mask (other dtypes go to libmha, which names them)."""
    if _torch_tensor(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == np.bool_ and mask:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f" or not mask:
        return np.ascontiguousarray(a, dtype=np.float32)
    return np.ascontiguousarray(a)


def _dtype_code(dtype):
    name = str(dtype).replace("torch.", "")
    if name in ("float32", "float", "f32"):
        return _capi.F32
    if name in ("float16", "half", "f16"):
        return _capi.F16
    raise InvalidArgumentError(
        "MultiheadAttention: dtype %r; expected \"float32\" or \"float16\""
        % (dtype,), 1)


def _fill(arr, a, code=None):
    """Points an mha_host_array at NumPy array a."""
    if a.ndim > _capi.MAX_DIMS:
        raise InvalidArgumentError(
            "MultiheadAttention: an input has %d dimensions; libmha takes at "
            "most %d" % (a.ndim, _capi.MAX_DIMS), 1)
    arr.data = a.ctypes.data
    arr.dtype = c_dtype(a.dtype) if code is None else code
    arr.ndim = a.ndim
    for i, s in enumerate(a.shape):
        arr.shape[i] = s


class MultiheadAttention(Trainable, DeviceChild):
    """torch.nn.MultiheadAttention on a libmha device.

    ``MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True,
    add_bias_kv=False, add_zero_attn=False, kdim=None, vdim=None,
    batch_first=False, device=None, dtype="float32")``: PyTorch's arguments
    and meanings; dropout must be 0 (libmha has none); device is a
    libmha.Device, a spec ("vulkan:0") or None (MHA_DEVICE, else the best
    device); dtype "float16" stores the weights and intermediates in fp16
    (devices with the "fp16-storage" feature), inputs and outputs stay
    float32. Weights start unset: ``load_state_dict``,
    ``load_safetensors`` or ``from_torch`` set them.

    Calling it is PyTorch's forward (see ``__call__``), with head gates
    and per-head outputs on request; ``prune_heads``, ``kept_heads`` and
    ``save_safetensors`` remove heads for good and keep the result;
    ``state_dict()`` reads the weights back. Training: a forward with
    ``save_for_backward=True``, then ``backward(grad_output)`` into
    ``grads`` (libmha.Gradients) and ``libmha.AdamW(layer).step()``.
    ``close()`` frees the layer (also done by the garbage collector and by
    closing its Device), its gradients and optimizers first."""

    _noun = "layer"
    _c_gradients, _c_adamw = "mha_gradients_create", "mha_adamw_create"

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True,
                 add_bias_kv=False, add_zero_attn=False, kdim=None, vdim=None,
                 batch_first=False, device=None, dtype="float32"):
        self.device = resolve(device)
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        self.bias, self.add_bias_kv = bool(bias), bool(add_bias_kv)
        self.add_zero_attn, self.batch_first = bool(add_zero_attn), bool(
            batch_first)
        code = _dtype_code(dtype)
        self.dtype = "float16" if code == _capi.F16 else "float32"
        dev = self.device
        lib = dev._lib
        cfg = _capi.LayerConfig()
        with dev.lock:
            dev.check(lib.mha_layer_config_init_sized(
                ctypes.byref(cfg), ctypes.sizeof(cfg), self.embed_dim,
                self.num_heads))
            cfg.dropout = float(dropout)
            cfg.bias, cfg.add_bias_kv = self.bias, self.add_bias_kv
            cfg.add_zero_attn = self.add_zero_attn
            cfg.kdim, cfg.vdim = self.kdim, self.vdim
            cfg.batch_first = self.batch_first
            cfg.dtype = code
            self._own(lib.mha_layer_create, "MultiheadAttention",
                      ctypes.byref(cfg))

    @classmethod
    def from_torch(cls, module, device=None, dtype="float32"):
        """A layer with the configuration and weights of a
        torch.nn.MultiheadAttention (its dropout is ignored: inference)."""
        layer = cls(module.embed_dim, module.num_heads,
                    bias=module.in_proj_bias is not None,
                    add_bias_kv=module.bias_k is not None,
                    add_zero_attn=module.add_zero_attn, kdim=module.kdim,
                    vdim=module.vdim, batch_first=module.batch_first,
                    device=device, dtype=dtype)
        layer.load_state_dict(module.state_dict())
        return layer

    @property
    def head_dim(self):
        """embed_dim // num_heads."""
        return self.embed_dim // self.num_heads

    def weight_names(self):
        """The state_dict keys this configuration needs, PyTorch's names."""
        same = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        names = (["in_proj_weight"] if same else
                 ["q_proj_weight", "k_proj_weight", "v_proj_weight"])
        if self.bias:
            names.append("in_proj_bias")
        if self.add_bias_kv:
            names += ["bias_k", "bias_v"]
        names.append("out_proj.weight")
        if self.bias:
            names.append("out_proj.bias")
        return names

    def set_weight(self, name, value):
        """Sets one weight (NumPy array or torch tensor, PyTorch's layout)
        by its state_dict name (mha_layer_set_weight)."""
        a = _host(value)
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_layer_set_weight(
                self.handle("MultiheadAttention.set_weight"), name.encode(),
                a.ctypes.data, a.ndim, shape_array(a.shape)))

    def load_state_dict(self, state_dict, strict=True):
        """Sets weights from a mapping of PyTorch state_dict names to NumPy
        arrays or torch tensors. strict (PyTorch's meaning): every needed
        key must be there (else MissingWeightError naming them) and any
        other key is an error of libmha's; not strict: other keys are
        skipped. Returns (missing_keys, unexpected_keys)."""
        needed = self.weight_names()
        missing = [k for k in needed if k not in state_dict]
        unexpected = [k for k in state_dict if k not in needed]
        if strict and missing:
            raise MissingWeightError(
                "MultiheadAttention.load_state_dict: missing %s"
                % ", ".join(missing), 8)
        for name, value in state_dict.items():
            if name in needed or strict:
                self.set_weight(name, value)
        return IncompatibleKeys(missing, unexpected)

    def load_safetensors(self, path, prefix=""):
        """Loads every needed weight from a .safetensors file of a state_dict
        (mha_layer_load_safetensors); prefix such as
        "encoder.layers.3.self_attn." picks one layer of a model's file."""
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_layer_load_safetensors(
                self.handle("MultiheadAttention.load_safetensors"),
                str(path).encode(), (prefix or "").encode()))

    def kept_heads(self):
        """The original indices of the heads the layer keeps (all of
        range(num_heads) until ``prune_heads``), ascending."""
        return self._kept_heads("mha_layer_kept_heads",
                                "MultiheadAttention.kept_heads",
                                self.num_heads)

    def prune_heads(self, heads):
        """Removes heads for good (mha_layer_prune_heads): their rows of
        the q/k/v projections and columns of out_proj go, device memory and
        the forward's work shrink. Heads are named by their index in the
        original layer; afterwards head_gates, head outputs and per-head
        weights count the kept heads (``kept_heads()`` order)."""
        self._prune_heads("mha_layer_prune_heads",
                          "MultiheadAttention.prune_heads", heads)

    def save_safetensors(self, path, prefix=""):
        """Writes the weights (pruned or not) under PyTorch's state_dict
        names, the kept heads in the metadata, so ``load_safetensors`` on a
        layer of the original configuration gives this layer back."""
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_layer_save_safetensors(
                self.handle("MultiheadAttention.save_safetensors"),
                str(path).encode(), (prefix or "").encode()))

    def state_dict(self):
        """The weights as PyTorch's state_dict: name -> float32 NumPy array
        (through save_safetensors, so trained weights come back from the
        device)."""
        with tempfile.TemporaryDirectory(prefix="libmha-") as d:
            path = os.path.join(d, "layer.safetensors")
            self.save_safetensors(path)
            return read_safetensors(path)

    def _result_shapes(self, qshape, kshape, need_weights, average):
        """PyTorch's output and weights shapes for these input shapes, or
        placeholders where the ranks are wrong (libmha then says so)."""
        if len(qshape) not in (2, 3) or len(kshape) != len(qshape):
            return (1,), (1,)
        seq = 1 if len(qshape) == 3 and self.batch_first else 0
        L, S = qshape[seq], kshape[seq]
        S += self.add_bias_kv + self.add_zero_attn
        out = tuple(qshape[:-1]) + (self.embed_dim,)
        if not need_weights:
            return out, None
        heads = () if average else (len(self.kept_heads()),)
        if len(qshape) == 2:
            return out, heads + (L, S)
        return out, (qshape[1 - seq],) + heads + (L, S)

    def _head_outputs_shape(self, qshape):
        """[N, H, L, d] (or [H, L, d] unbatched) for the kept heads."""
        seq = 1 if len(qshape) == 3 and self.batch_first else 0
        per = (len(self.kept_heads()), qshape[seq], self.head_dim)
        return per if len(qshape) == 2 else (qshape[1 - seq],) + per

    def __call__(self, query, key, value, key_padding_mask=None,
                 need_weights=True, attn_mask=None, average_attn_weights=True,
                 is_causal=False, head_gates=None, return_head_outputs=False,
                 save_for_backward=False):
        """PyTorch's forward: returns (output, weights), weights None when
        need_weights is False; (output, weights, head_outputs) with
        return_head_outputs.

        save_for_backward: a training forward (need_weights=False; f32 or
        f16 layers), which ``backward`` backpropagates through; the layer keeps
        the inputs on the device until its next training forward, and a
        Tensor given must stay unchanged until then.

        head_gates [H] or [N, H] (H the kept heads): each head's attention
        output times its gate before out_proj (Michel et al. 2019); a head
        whose gate is 0 for every batch item is not computed.
        head_outputs: each head's output before its gate and out_proj,
        [N, H, L, d] ([H, L, d] unbatched) whatever batch_first says.

        query (L, N, E), key (S, N, kdim), value (S, N, vdim), (N, L, E) etc.
        with batch_first, or unbatched (L, E); key_padding_mask (N, S) or
        (S); attn_mask (L, S) or (N*num_heads, L, S); masks bool (True =
        may not attend) or float (added to the scores). is_causal masks
        keys after the query (combined with any attn_mask; PyTorch 2
        treats it as a hint about attn_mask instead). Weights: (N, L, S')
        averaged over heads, else (N, num_heads, L, S'). NumPy in gives
        NumPy out, torch tensors torch tensors, libmha.Tensor a
        libmha.Tensor on the layer's device. A query row whose keys are all
        masked gives out_proj.bias and zero weights (PyTorch: NaN)."""
        device_in = any(isinstance(x, Tensor) for x in (query, key, value))
        # the host-memory forward has no head control and does not train:
        # those go by device
        if (device_in or head_gates is not None or return_head_outputs
                or save_for_backward):
            r = self._forward_device(query, key, value, key_padding_mask,
                                     need_weights, attn_mask,
                                     average_attn_weights, is_causal,
                                     head_gates, return_head_outputs,
                                     save_for_backward)
            if not device_in:
                r = self._to_host(r, query)
            return r if return_head_outputs else r[:2]
        return self._like(self._forward_host(
            query, key, value, key_padding_mask, need_weights, attn_mask,
            average_attn_weights, is_causal), query)

    forward = __call__

    @staticmethod
    def _like(arrays, like):
        """NumPy results as torch tensors when the query (like) is one."""
        if not _torch_tensor(like):
            return tuple(arrays)
        import torch
        to = dict(device=like.device, dtype=like.dtype)
        return tuple(torch.from_numpy(a).to(**to) if a is not None else None
                     for a in arrays)

    @classmethod
    def _to_host(cls, results, like):
        """Device results as NumPy arrays (torch tensors when like is
        one); the device tensors are closed."""
        host = []
        for t in results:
            host.append(t.numpy() if t is not None else None)
            if t is not None:
                t.close()
        return cls._like(host, like)

    def _forward_host(self, query, key, value, kpm, need_weights, mask,
                      average, is_causal):
        q, k, v = _host(query), _host(key), _host(value)
        a = _capi.HostForwardArgs()
        lib = self.device._lib
        lib.mha_host_forward_args_init_sized(ctypes.byref(a), ctypes.sizeof(a))
        _fill(a.query, q)
        _fill(a.key, k)
        _fill(a.value, v)
        kpm = _host(kpm, mask=True) if kpm is not None else None
        mask = _host(mask, mask=True) if mask is not None else None
        if kpm is not None:
            _fill(a.key_padding_mask, kpm)
        if mask is not None:
            _fill(a.attn_mask, mask)
        a.is_causal, a.need_weights = bool(is_causal), bool(need_weights)
        a.average_attn_weights = bool(average)
        dev = self.device
        with dev.lock:
            ptr = self.handle("MultiheadAttention.forward")
            # Shapes libmha rejects get placeholder results: the call below
            # fails on its checks of the inputs, with libmha's message.
            out_shape, w_shape = self._result_shapes(q.shape, k.shape,
                                                     need_weights, average)
            out = np.empty(out_shape, np.float32)
            w = np.empty(w_shape, np.float32) if need_weights else None
            a.output, a.output_count = out.ctypes.data, out.size
            if w is not None:
                a.weights, a.weights_count = w.ctypes.data, w.size
            dev.check(lib.mha_layer_forward_host(ptr, ctypes.byref(a)))
        return out, w

    def _forward_device(self, query, key, value, kpm, need_weights, mask,
                        average, is_causal, gates=None, want_heads=False,
                        train=False):
        dev = self.device
        temps = []
        inputs = None  # a training forward's inputs, once it succeeded

        def on_device(x, is_mask=False):
            if x is None or isinstance(x, Tensor):
                return x
            t = Tensor(_host(x, mask=is_mask), dev)
            temps.append(t)
            return t

        try:
            q, k, v = on_device(query), on_device(key), on_device(value)
            kpm, mask = on_device(kpm, True), on_device(mask, True)
            gates = on_device(gates)
            out_shape, w_shape = self._result_shapes(q.shape, k.shape,
                                                     need_weights, average)
            out = Tensor.empty(out_shape, np.float32, dev)
            w = (Tensor.empty(w_shape, np.float32, dev) if need_weights
                 else None)
            h = (Tensor.empty(self._head_outputs_shape(q.shape), np.float32,
                              dev) if want_heads else None)
            a = _capi.ForwardArgs()
            lib = dev._lib
            lib.mha_forward_args_init_sized(ctypes.byref(a), ctypes.sizeof(a))
            fn = "MultiheadAttention.forward"
            a.query, a.key, a.value = q.handle(fn), k.handle(fn), v.handle(fn)
            a.key_padding_mask = kpm.handle(fn) if kpm is not None else None
            a.attn_mask = mask.handle(fn) if mask is not None else None
            a.is_causal, a.need_weights = bool(is_causal), bool(need_weights)
            a.average_attn_weights = bool(average)
            a.output = out.handle(fn)
            a.weights = w.handle(fn) if w is not None else None
            a.head_gates = gates.handle(fn) if gates is not None else None
            a.head_outputs = h.handle(fn) if h is not None else None
            a.save_for_backward = bool(train)
            with dev.lock:
                dev.check(lib.mha_layer_forward(self.handle(fn),
                                                ctypes.byref(a)))
            if train:
                inputs = (q, k, v, kpm, mask, gates)
                self._save(inputs, temps)
            return out, w, h
        finally:
            if inputs is None:
                for t in temps:
                    t.close()

    def backward(self, grad_output, accumulate=False, grads=None,
                 return_input_grads=False, return_gates_grad=False):
        """Backpropagates grad_output (dL/d output, the output's shape)
        through the last training forward (mha_layer_backward) into grads
        (a libmha.Gradients of this layer; None: ``self.grads``),
        overwriting them, or adding into them with accumulate (as autograd
        adds into .grad over micro-batches). Returns grads; with
        return_input_grads also (dquery, dkey, dvalue) (for one input x
        given as query, key and value, dL/dx is their sum); with
        return_gates_grad also dL/d head_gates (a training forward with
        head_gates: Michel et al.'s head importance is its magnitude).
        Results are grad_output's kind (NumPy, torch or libmha.Tensor).
        BadStateError without a training forward or after the weights
        changed (set, loaded, pruned, stepped) since it."""
        dev, temps, fn = self.device, [], "MultiheadAttention.backward"
        g = self.grads if grads is None else grads
        try:
            dy, result = self._backward_outputs(grad_output, temps)
            a = _capi.BackwardArgs()
            lib = dev._lib
            lib.mha_backward_args_init_sized(ctypes.byref(a), ctypes.sizeof(a))
            a.grad_output, a.grads = dy.handle(fn), g.handle(fn)
            a.accumulate = bool(accumulate)
            dx = ([result(self._saved_shape(i)) for i in range(3)]
                  if return_input_grads else None)
            if dx is not None:
                a.grad_query, a.grad_key, a.grad_value = (
                    t.handle(fn) for t in dx)
            dg = result(self._saved_shape(5)) if return_gates_grad else None
            a.grad_head_gates = dg.handle(fn) if dg is not None else None
            with dev.lock:
                dev.check(lib.mha_layer_backward(self.handle(fn),
                                                 ctypes.byref(a)))
            extra = []
            if dx is not None:
                extra.append(tuple(_returned(t, grad_output) for t in dx))
            if dg is not None:
                extra.append(_returned(dg, grad_output))
            return (g, *extra) if extra else g
        finally:
            for t in temps:
                t.close()

    def _destroy(self, lib, ptr):
        return lib.mha_layer_destroy(ptr)

    def __repr__(self):
        return ("libmha.MultiheadAttention(embed_dim=%d, num_heads=%d, "
                "kdim=%d, vdim=%d, bias=%s, add_bias_kv=%s, add_zero_attn=%s, "
                "batch_first=%s, device=%r, dtype=%r%s)" % (
                    self.embed_dim, self.num_heads, self.kdim, self.vdim,
                    self.bias, self.add_bias_kv, self.add_zero_attn,
                    self.batch_first, self.device.spec, self.dtype,
                    ", closed" if self.closed else ""))
