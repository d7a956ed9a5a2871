"""_handle: what Device, Tensor and MultiheadAttention share as owners of
one libmha handle: close() on leaving a ``with`` block and on garbage
collection, ``closed``, and BadStateError for a call on a closed object."""
import ctypes

from .errors import BadStateError


class Handle:
    """An object owning one libmha handle in ``_ptr`` (None once closed)."""

    _ptr = None
    _noun = "object"

    @property
    def closed(self):
        """True once close() ran."""
        return self._ptr is None

    def handle(self, what):
        """The open handle, or BadStateError naming the call (what)."""
        if self._ptr is None:
            raise BadStateError("%s: the %s is closed" % (what, self._noun),
                                16)
        return self._ptr

    def close(self):
        """Frees the handle; closing twice does nothing."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to report to
            pass


class DeviceChild(Handle):
    """A handle made on a Device (a tensor or a layer): its calls hold the
    device's lock, and the device closes it when it closes first."""

    device = None

    def _destroy(self, lib, ptr):
        """The C call that frees ptr; returns its status."""
        raise NotImplementedError

    def handle(self, what):
        """The open handle; BadStateError when it or its device is closed."""
        ptr = super().handle(what)
        self.device.handle(what)
        return ptr

    def _own(self, create, what, *args, parent=None):
        """Makes this object's handle with create(device, *args, &handle)
        (holding the device's lock), so the device closes it with itself;
        what names the call in errors. A parent (a layer, for its
        gradients or optimizer) is made from instead of the device and
        closes this object before itself."""
        dev = self.device
        with dev.lock:
            ptr = ctypes.c_void_p()
            made_from = parent if parent is not None else dev
            dev.check(create(made_from.handle(what), *args,
                             ctypes.byref(ptr)))
            self._ptr = ptr
            dev.adopt(self)
        if parent is not None:
            parent._depend(self)

    def _kept_heads(self, c_fn, what, capacity):
        """The kept heads' original indices from c_fn (mha_layer_ or
        mha_decoder_kept_heads), at most capacity of them."""
        dev = self.device
        buf = (ctypes.c_int64 * capacity)()
        n = ctypes.c_int64()
        with dev.lock:
            dev.check(getattr(dev._lib, c_fn)(self.handle(what), buf,
                                              capacity, ctypes.byref(n)))
        return list(buf[:n.value])

    def _prune_heads(self, c_fn, what, heads):
        """Prunes heads (original indices) through c_fn (mha_layer_ or
        mha_decoder_prune_heads)."""
        hs = [int(h) for h in heads]
        arr = (ctypes.c_int64 * max(len(hs), 1))(*hs)
        dev = self.device
        with dev.lock:
            dev.check(getattr(dev._lib, c_fn)(self.handle(what), arr,
                                              len(hs)))

    def close(self):
        """Frees the handle; closing twice does nothing."""
        if self._ptr is None:
            return
        dev = self.device
        with dev.lock:
            ptr, self._ptr = self._ptr, None
            dev._children.discard(self)
            dev.check(self._destroy(dev._lib, ptr))
