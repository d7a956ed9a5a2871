"""libmha: multi-head attention on Vulkan, OpenCL and CPU SIMD devices,
from NumPy and PyTorch.

A thin ctypes layer over the libmha shared library (no compiled extension):

    import numpy as np, libmha
    attn = libmha.MultiheadAttention(64, 8, batch_first=True, device="cpu")
    attn.load_state_dict(state_dict)            # PyTorch's names and layout
    out, weights = attn(x, x, x, is_causal=True)

``libmha.devices()`` lists the devices, ``libmha.Device(spec)`` opens one,
``libmha.Tensor`` keeps data on a device (``Tensor.view`` without a copy),
``libmha.attention`` runs the attention core over projected heads (GQA,
causal, window, softcap, ALiBi, sinks, key lengths),
``libmha.DecoderAttention`` and ``libmha.KVCache`` are a decoder model's
self-attention layer (RoPE, GQA) over a KV cache (prefill and decode),
``libmha.torch.replace_attention``
runs a PyTorch model's attention on libmha. Both layers train: a forward
with ``save_for_backward=True``, ``layer.backward(grad_output)`` into
``layer.grads`` (``libmha.Gradients``), ``libmha.AdamW(layer).step()``;
``Device.profile()`` times each node of a device's graph and
``Device.variants(kind)`` lists its kernel variants. Errors are
``libmha.Error`` subclasses, one per libmha status. The library is found at $MHA_LIBRARY,
beside an installed package, in the source tree's build/, or through the
dynamic loader (``libmha.library_path()`` says which).
"""
from ._capi import library_path
from .attention import attention
from .decoder import DecoderAttention, KVCache
from .device import Device, devices
from .errors import (BadStateError, BufferTooSmallError, CorruptFileError,
                     DeviceError, DeviceLostError, DtypeMismatchError, Error,
                     InputOutputError, InvalidArgumentError,
                     LibraryNotFoundError, LimitReachedError,
                     MissingWeightError, NoDeviceError, NotFoundError,
                     OutOfMemoryError, ShapeMismatchError, SizeOverflowError,
                     UnsupportedError)
from .layer import MultiheadAttention
from .tensor import Tensor
from .training import AdamW, Gradients

__version__ = "0.1.0"


def version():
    """The version of the libmha shared library in use ("0.1.0")."""
    from ._capi import lib
    return lib().mha_version().decode()


__all__ = [
    "AdamW", "BadStateError", "BufferTooSmallError", "CorruptFileError",
    "DecoderAttention", "Device",
    "DeviceError", "DeviceLostError", "DtypeMismatchError", "Error",
    "Gradients",
    "InputOutputError", "InvalidArgumentError", "KVCache",
    "LibraryNotFoundError",
    "LimitReachedError", "MissingWeightError", "MultiheadAttention",
    "NoDeviceError", "NotFoundError", "OutOfMemoryError",
    "ShapeMismatchError", "SizeOverflowError", "Tensor", "UnsupportedError",
    "attention", "devices", "library_path", "version",
]
