"""training: the backward pass and AdamW of mha.h's "Training" section for
libmha.MultiheadAttention and libmha.DecoderAttention: libmha.Gradients
(mha_gradients: one device tensor per weight, read by name),
libmha.AdamW (mha_adamw) and Trainable, what both layers share to run a
training forward and a backward.

    out, _ = layer(x, x, x, need_weights=False, save_for_backward=True)
    grads = layer.backward(dy)                 # layer.grads, overwritten
    grads["in_proj_weight"]                    # a NumPy array
    opt = libmha.AdamW(layer, lr=1e-3)
    opt.step(grads, lr=warmup(step))

A training forward references its inputs on the device (mha.h), so the
layer keeps the device copies of host inputs until its next training
forward or close().
"""
import collections.abc
import ctypes
import weakref

import numpy as np

from . import _capi
from ._handle import DeviceChild
from .tensor import Tensor


def _returned(t, like):
    """Result tensor t as the caller's kind (that of like): the Tensor
    itself, else a NumPy array or a torch tensor (t is then closed)."""
    if isinstance(like, Tensor):
        return t
    from .layer import _torch_tensor
    a = t.numpy()
    t.close()
    if _torch_tensor(like):
        import torch
        return torch.from_numpy(a).to(device=like.device)
    return a


class _Borrowed(Tensor):
    """A Tensor owned by a Gradients object: never destroyed by Python,
    closed (unusable) when its Gradients close."""

    def _destroy(self, lib, ptr):
        return 0


class Gradients(DeviceChild, collections.abc.Mapping):
    """The gradients of a layer's weights on its device (mha_gradients),
    zeroed at creation: ``Gradients(layer)``, or the layer's own
    ``layer.grads``. A read-only mapping from the weight names of
    ``layer.weight_names()`` to NumPy arrays (``grads["out_proj.weight"]``
    downloads one; another name is a KeyError); ``tensor(name)`` is the gradient as a libmha.Tensor on
    the device (no copy; closed with the gradients); ``zero()``. A
    backward with ``accumulate=True`` adds into them. Closed with their
    layer; after ``prune_heads`` they no longer fit it (BadStateError)."""

    _noun = "gradients"
    # an owner of a handle, not a value: compared and hashed by identity
    __eq__, __hash__ = object.__eq__, object.__hash__

    def __init__(self, layer):
        self.device, self.layer = layer.device, layer
        self._names = tuple(layer.weight_names())
        self._tensors = {}
        self._own(getattr(self.device._lib, layer._c_gradients), "Gradients",
                  parent=layer)

    def tensor(self, name):
        """The gradient of weight name as a libmha.Tensor (owned by these
        gradients: do not close it); NotFoundError or InvalidArgumentError
        for a name the layer does not have."""
        t = self._tensors.get(name)
        if t is not None and not t.closed:
            return t
        dev, fn = self.device, "Gradients.tensor"
        lib = dev._lib
        with dev.lock:
            ptr = ctypes.c_void_p()
            dev.check(lib.mha_gradients_get(self.handle(fn), name.encode(),
                                            ctypes.byref(ptr)))
            dtype, ndim = ctypes.c_int(), ctypes.c_int()
            shape = (ctypes.c_int64 * _capi.MAX_DIMS)()
            dev.check(lib.mha_tensor_get_shape(ptr, ctypes.byref(dtype),
                                               ctypes.byref(ndim), shape))
            t = _Borrowed.__new__(_Borrowed)
            t.device, t._ptr, t._views = dev, ptr, weakref.WeakSet()
            t.shape, t.dtype = tuple(shape[:ndim.value]), np.dtype(np.float32)
            dev.adopt(t)
        self._tensors[name] = t
        return t

    def __getitem__(self, name):
        if name not in self._names:  # a mapping's miss (dict.get works)
            raise KeyError(name)
        return self.tensor(name).numpy()

    def __iter__(self):
        return iter(self._names)

    def __contains__(self, name):
        return name in self._names

    def __len__(self):
        return len(self._names)

    def zero(self):
        """Sets every gradient to 0 (optimizer.zero_grad(set_to_none=
        False))."""
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_gradients_zero(
                self.handle("Gradients.zero")))

    def close(self):
        """Frees the gradients (their tensors first); twice does nothing."""
        for t in self._tensors.values():
            t.close()
        super().close()

    def _destroy(self, lib, ptr):
        return lib.mha_gradients_destroy(ptr)

    def __repr__(self):
        return "libmha.Gradients(%s%s)" % (
            ", ".join(self._names), ", closed" if self.closed else "")


class AdamW(DeviceChild):
    """torch.optim.AdamW over every weight of a layer, on its device
    (mha_adamw): ``AdamW(layer, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0.01)`` (PyTorch's defaults; InvalidArgumentError for
    betas outside [0, 1), eps <= 0 or a negative weight_decay).
    ``step(grads=None, lr=None)`` takes one step with the layer's
    gradients (None: ``layer.grads``) at lr (None: ``self.lr``, which may
    be set between steps: a warm-up schedule is the caller's loop).
    ``steps`` counts them. Closed with its layer."""

    _noun = "optimizer"

    def __init__(self, layer, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.01):
        self.device, self.layer, self.lr = layer.device, layer, float(lr)
        dev = self.device
        lib = dev._lib
        cfg = _capi.AdamWConfig()
        with dev.lock:
            dev.check(lib.mha_adamw_config_init_sized(ctypes.byref(cfg),
                                                      ctypes.sizeof(cfg)))
            cfg.beta1, cfg.beta2 = float(betas[0]), float(betas[1])
            cfg.eps, cfg.weight_decay = float(eps), float(weight_decay)
        self._own(getattr(lib, layer._c_adamw), "AdamW", ctypes.byref(cfg),
                  parent=layer)

    def step(self, grads=None, lr=None):
        """One AdamW step (mha_adamw_step) of the layer's weights, in place
        on the device. The layer's saved training forward is then stale: a
        backward needs a new one (BadStateError)."""
        g = self.layer.grads if grads is None else grads
        dev, fn = self.device, "AdamW.step"
        with dev.lock:
            dev.check(dev._lib.mha_adamw_step(
                self.handle(fn), g.handle(fn),
                self.lr if lr is None else float(lr)))

    @property
    def steps(self):
        """Steps taken so far."""
        with self.device.lock:
            return self.device._lib.mha_adamw_steps(self.handle("AdamW.steps"))

    def _destroy(self, lib, ptr):
        return lib.mha_adamw_destroy(ptr)

    def __repr__(self):
        return "libmha.AdamW(lr=%g, steps=%s)" % (
            self.lr, "closed" if self.closed else self.steps)


class Trainable:
    """Training state shared by MultiheadAttention and DecoderAttention:
    ``grads`` (made on first use), the objects that depend on the layer
    (closed before it) and the inputs its training forward references."""

    _c_gradients = None  # the C call making gradients for this layer kind
    _c_adamw = None      # and an optimizer
    _grads = None
    _saved = ()          # (device inputs of the training forward, shapes)

    @property
    def grads(self):
        """The layer's own Gradients (what backward writes by default),
        made zeroed on first use."""
        if self._grads is None or self._grads.closed:
            self._grads = Gradients(self)
        return self._grads

    def _depend(self, obj):
        """Registers obj (gradients, an optimizer) to close before us."""
        if "_dependents" not in self.__dict__:
            self._dependents = weakref.WeakSet()
        self._dependents.add(obj)

    def _save(self, inputs, temps):
        """After a training forward: keeps its device inputs alive (they
        are referenced by libmha until the next training forward) and
        closes those of the previous one."""
        old = self._saved
        self._saved = (list(inputs), list(temps))
        for t in old[1] if old else ():
            t.close()

    def _saved_shape(self, i):
        """The shape of input i of the last training forward ((1,) when
        there was none: libmha then reports the missing forward)."""
        if not self._saved or self._saved[0][i] is None:
            return (1,)
        return self._saved[0][i].shape

    def _backward_outputs(self, grad_output, temps):
        """grad_output on the device (temporaries added to temps) and a
        maker of result tensors that are temporaries unless the caller
        gave a Tensor."""
        from .decoder import _on_device
        dev = self.device
        dy = _on_device(grad_output, dev, temps, np.float32)

        def result(shape):
            t = Tensor.empty(shape, np.float32, dev)
            if not isinstance(grad_output, Tensor):
                temps.append(t)
            return t

        return dy, result

    def close(self):
        """Frees the layer, after its gradients, optimizers and saved
        inputs; closing twice does nothing."""
        for obj in list(self.__dict__.get("_dependents", ())):
            obj.close()
        for t in self._saved[1] if self._saved else ():
            t.close()
        self._saved = ()
        super().close()
