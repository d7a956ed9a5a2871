"""tensor: libmha.Tensor, an array that lives in a device's memory, so data
stays on a GPU between forwards and between layers (mha_tensor_*), and
strided views of one without a copy (mha_tensor_view)."""
import ctypes
import weakref

import numpy as np

from . import _capi
from .device import resolve
from ._handle import DeviceChild
from .errors import DtypeMismatchError, ShapeMismatchError, SizeOverflowError

_TO_C = {np.dtype(np.float32): _capi.F32, np.dtype(np.float16): _capi.F16,
         np.dtype(np.bool_): _capi.BOOL, np.dtype(np.int32): _capi.I32}
_TO_NP = {v: k for k, v in _TO_C.items()}


def c_dtype(dtype, what="array"):
    """libmha's dtype number for a NumPy dtype, or DtypeMismatchError."""
    try:
        return _TO_C[np.dtype(dtype)]
    except KeyError:
        raise DtypeMismatchError(
            "%s has dtype %s; libmha holds float32, float16, bool and int32"
            % (what, np.dtype(dtype)), 3) from None


def shape_array(shape):
    """A ctypes int64 array holding shape."""
    return (ctypes.c_int64 * max(len(shape), 1))(*shape)


def _narrow_int(a):
    """int64 data as int32, or SizeOverflowError when a value does not fit."""
    if a.size and (a.min() < -2**31 or a.max() >= 2**31):
        raise SizeOverflowError(
            "Tensor: an int64 value does not fit libmha's int32", 5)
    return a.astype(np.int32)


class Tensor(DeviceChild):
    """A device-resident tensor: ``libmha.Tensor(array, device)``.

    array is anything ``numpy.asarray`` takes (float64 becomes float32,
    int64 int32; float32, float16, bool and int32 are kept: float16 on
    devices with "fp16-storage" and the CPU); device is a libmha.Device,
    a spec string or None (the default device). ``Tensor.empty(shape,
    dtype, device)`` makes one without data. ``.numpy()`` copies it back to
    the host. A forward given Tensors returns Tensors on the same device,
    so chained layers never copy through the host. ``close()`` frees the
    device memory (also done by the garbage collector); a tensor with views
    closes them first. ``view(offset, shape, strides)`` is a strided view
    (what ``libmha.attention`` takes for a fused QKV buffer)."""

    _noun = "tensor"
    _root = None  # a view: the tensor whose storage it indexes
    _strides = None  # a view: its strides in elements (None: row-major)
    _offset = 0

    def __init__(self, array, device=None):
        a = np.asarray(array)
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        elif a.dtype == np.int64:
            a = _narrow_int(a)
        self._make(a.shape, a.dtype, device)
        self.upload(a)

    @classmethod
    def empty(cls, shape, dtype="float32", device=None):
        """An uninitialised tensor of shape and dtype on device."""
        t = cls.__new__(cls)
        t._make(tuple(shape), np.dtype(dtype), device)
        return t

    def _make(self, shape, dtype, device):
        self.device = resolve(device)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        code = c_dtype(self.dtype, "Tensor")
        self._views = weakref.WeakSet()
        self._own(self.device._lib.mha_tensor_create, "Tensor", code,
                  len(self.shape), shape_array(self.shape))

    def view(self, offset, shape, strides=None):
        """A view of this tensor's storage without a copy (mha_tensor_view):
        element (i0, ..., in) of the view is element offset +
        sum(ik * strides[k]) of the storage (in elements; for a view of a
        view, of the storage of the tensor it views). strides None means
        row-major; 0 broadcasts. A fused projection qkv [B, T, (Hq + 2
        Hkv) d] holds q = ``qkv.view(0, (B, T, Hq, d), (T*W, W, d, 1))``
        with W its row width, k at offset Hq d, v at (Hq + Hkv) d. The view
        shares the tensor's memory and dtype and is closed with it; a
        row-major one uploads in place, and ``numpy()`` reads any."""
        shape = tuple(int(s) for s in shape)
        st = None if strides is None else tuple(int(s) for s in strides)
        dev = self.device
        with dev.lock:
            ptr = ctypes.c_void_p()
            dev.check(dev._lib.mha_tensor_view(
                self.handle("Tensor.view"), int(offset), len(shape),
                shape_array(shape), None if st is None else shape_array(st),
                ctypes.byref(ptr)))
            v = Tensor.__new__(Tensor)
            v.device, v.shape, v.dtype, v._ptr = dev, shape, self.dtype, ptr
            v._views = weakref.WeakSet()
            v._root = self._root or self
            v._offset = int(offset)
            v._strides = st
            v._base = self  # keeps the base alive while the view is
            self._views.add(v)
            dev.adopt(v)
        return v

    def upload(self, array):
        """Copies array (same shape; converted to the tensor's dtype) in."""
        a = np.ascontiguousarray(array, dtype=self.dtype)
        if a.shape != self.shape:
            raise ShapeMismatchError(
                "Tensor.upload: array has shape %s; the tensor %s"
                % (list(a.shape), list(self.shape)), 2)
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_tensor_upload(
                self.handle("Tensor.upload"), a.ctypes.data, a.nbytes))

    def numpy(self):
        """A new NumPy array holding the tensor's data."""
        if self._strides is not None:
            return self._gather()
        out = np.empty(self.shape, self.dtype)
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_tensor_download(
                self.handle("Tensor.numpy"), out.ctypes.data, out.nbytes))
        return out

    def __array__(self, dtype=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def _gather(self):
        """A strided view's elements, read from its root's storage."""
        self.handle("Tensor.numpy")
        flat = self._root.numpy().reshape(-1)
        return np.lib.stride_tricks.as_strided(
            flat[self._offset:], self.shape,
            [s * flat.itemsize for s in self._strides]).copy()

    @property
    def ndim(self):
        """Number of dimensions."""
        return len(self.shape)

    def close(self):
        """Frees the tensor, after its views; closing twice does nothing."""
        for v in list(getattr(self, "_views", ())):
            v.close()
        super().close()

    def _destroy(self, lib, ptr):
        return lib.mha_tensor_destroy(ptr)

    def __repr__(self):
        return "libmha.Tensor(shape=%s, dtype=%s, device=%r%s)" % (
            self.shape, self.dtype, self.device.spec,
            ", closed" if self.closed else "")
