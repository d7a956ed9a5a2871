"""tensor: libmha.Tensor, an array that lives in a device's memory, so data
stays on a GPU between forwards and between layers (mha_tensor_*)."""
import ctypes

import numpy as np

from . import _capi
from .device import resolve
from ._handle import DeviceChild
from .errors import DtypeMismatchError, ShapeMismatchError

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


class Tensor(DeviceChild):
    """A device-resident tensor: ``libmha.Tensor(array, device)``.

    array is anything ``numpy.asarray`` takes (float64 becomes float32;
    float32, float16, bool and int32 are kept); device is a libmha.Device,
    a spec string or None (the default device). ``Tensor.empty(shape,
    dtype, device)`` makes one without data. ``.numpy()`` copies it back to
    the host. A forward given Tensors returns Tensors on the same device,
    so chained layers never copy through the host. ``close()`` frees the
    device memory (also done by the garbage collector)."""

    _noun = "tensor"

    def __init__(self, array, device=None):
        a = np.asarray(array)
        if a.dtype == np.float64:
            a = a.astype(np.float32)
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
        dev = self.device
        with dev.lock:
            ptr = ctypes.c_void_p()
            dev.check(dev._lib.mha_tensor_create(
                dev.handle("Tensor"), code, len(self.shape),
                shape_array(self.shape), ctypes.byref(ptr)))
            self._ptr = ptr
            dev.adopt(self)

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
        out = np.empty(self.shape, self.dtype)
        dev = self.device
        with dev.lock:
            dev.check(dev._lib.mha_tensor_download(
                self.handle("Tensor.numpy"), out.ctypes.data, out.nbytes))
        return out

    def __array__(self, dtype=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    @property
    def ndim(self):
        """Number of dimensions."""
        return len(self.shape)

    def _destroy(self, lib, ptr):
        return lib.mha_tensor_destroy(ptr)

    def __repr__(self):
        return "libmha.Tensor(shape=%s, dtype=%s, device=%r%s)" % (
            self.shape, self.dtype, self.device.spec,
            ", closed" if self.closed else "")
