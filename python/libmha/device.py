"""device: libmha.Device (one libmha context and one open device) and
libmha.devices() (the ranked device list, as ``mha-info --json`` prints it).

A libmha context and everything made from it is used by one thread at a
time (mha.h), so each Device owns its own context and a lock that every
call on it, its layers and its tensors holds. The C call itself runs with
the GIL released (ctypes), so threads on *different* Devices run in
parallel, and threads sharing one Device take turns.
"""
import collections
import contextlib
import ctypes
import os
import threading
import weakref

from . import _capi
from ._handle import Handle
from .errors import error_for


#: One node a device ran while profiling (mha_profile_entry): op ("projection",
#: "attention", ...), ms (from the end of the node before it, or its start
#: after a wait, to its end), device_clock (True: the device's timestamps;
#: False: the host's clock around the call, exact on the CPU backend) and
#: variant (the kernel variant the tuning source named; None: the backend's
#: rules or built-in choice).
ProfileEntry = collections.namedtuple("ProfileEntry",
                                      "op ms device_clock variant")
# mha.h: mha_device_profile_start keeps at most this many nodes.
_PROFILE_KEPT = 4096


def _check(ctx, status, fallback=""):
    """Raises the status's error with the context's message (ctx may be
    None before a context exists)."""
    if status == 0:
        return
    msg = _capi.lib().mha_context_errmsg(ctx).decode() if ctx else ""
    if not msg:
        msg = fallback or _capi.lib().mha_status_str(status).decode()
    raise error_for(status, msg)


def _create_context():
    ctx = ctypes.c_void_p()
    _check(None, _capi.lib().mha_context_create(None, ctypes.byref(ctx)),
           "mha_context_create failed")
    return ctx


def _isa_json(features):
    """mha-info's cpu_isa object for a CPU device's feature bits."""
    isas = [(1 << 6, "avx512"), (1 << 4, "avx2"), (1 << 5, "neon"),
            (0, "scalar")]
    available = [name for bit, name in isas if not bit or features & bit]
    return {"available": available, "best": available[0]}


def _info_dict(info, is_default):
    """mha-info --json's object for one device."""
    d = {
        "index": info.index,
        "spec": "%s:%d" % (info.backend.decode(), info.backend_index),
        "backend": info.backend.decode(),
        "backend_index": info.backend_index,
        "kind": (_capi.DEVICE_KINDS[info.kind]
                 if 0 <= info.kind < len(_capi.DEVICE_KINDS) else "unknown"),
        "vendor": info.vendor.decode(errors="replace"),
        "name": info.name.decode(errors="replace"),
        "driver": info.driver.decode(errors="replace"),
        "memory_bytes": info.memory_bytes,
        "max_buffer_bytes": info.max_buffer_bytes,
        "compute_units": info.compute_units,
        "max_workgroup_size": info.max_workgroup_size,
        "shared_memory_bytes": info.shared_memory_bytes,
        "subgroup_size": info.subgroup_size,
        "features": [n for bit, n in _capi.FEATURES if info.features & bit],
    }
    if d["kind"] == "cpu" and d["backend"] == "cpu":
        d["cpu_isa"] = _isa_json(info.features)
    d["score"] = info.score
    d["default"] = bool(is_default)
    d["details"] = info.details.decode(errors="replace")
    return d


def _default_index(lib, ctx):
    """The index mha_device_open(ctx, NULL) picks (honours MHA_DEVICE)."""
    dev = ctypes.c_void_p()
    if lib.mha_device_open(ctx, None, None, ctypes.byref(dev)) != 0:
        return -1
    info = _capi.DeviceInfo()
    lib.mha_device_info_of(dev, ctypes.byref(info))
    lib.mha_device_destroy(dev)
    return info.index


def devices():
    """Every device libmha finds, best ranked first, as a list of dicts with
    the fields of ``mha-info --json``: index, spec ("vulkan:0", accepted by
    Device and MHA_DEVICE), backend, backend_index, kind, vendor, name,
    driver, memory_bytes, max_buffer_bytes, compute_units,
    max_workgroup_size, shared_memory_bytes, subgroup_size, features (list
    of names such as "fp16-storage"), cpu_isa (CPU backend only:
    {"available": [...], "best": ...}), score, default (the device
    ``Device()`` opens) and details."""
    lib = _capi.lib()
    ctx = _create_context()
    try:
        count = ctypes.c_int()
        _check(ctx, lib.mha_device_count(ctx, ctypes.byref(count)))
        default = (_default_index(lib, ctx) if os.environ.get("MHA_DEVICE")
                   else None)
        out = []
        for i in range(count.value):
            info = _capi.DeviceInfo()
            _check(ctx, lib.mha_device_get_info(ctx, i, ctypes.byref(info)))
            is_def = info.is_default if default is None else i == default
            out.append(_info_dict(info, is_def))
        return out
    finally:
        lib.mha_context_destroy(ctx)


class Device(Handle):
    """An open libmha device: ``Device("vulkan:0")``.

    spec: "best" or None (MHA_DEVICE, else the best ranked), a backend
    ("cpu", "vulkan", "opencl": its best device) or backend and index
    ("opencl:0"). threads (CPU backend: worker threads, 0 = one per core),
    cpu_isa ("scalar", "avx2", "avx512", "neon"; None = best) and
    cache_dir (GPU backends' kernel cache; None = MHA_CACHE_DIR or
    ~/.cache/libmha, "" = off) are mha_device_options. Raises NoDeviceError
    with libmha's message when no device matches.

    The Device owns its own libmha context. ``close()`` (or leaving a
    ``with`` block) closes every layer and tensor made on it, then the
    device; the garbage collector does the same."""

    _noun = "device"

    def __init__(self, spec=None, threads=0, cpu_isa=None, cache_dir=None):
        self._ctx = None
        self.lock = threading.RLock()
        self._children = weakref.WeakSet()
        lib = _capi.lib()
        self._lib = lib
        ctx = _create_context()
        opts = _capi.DeviceOptions()
        lib.mha_device_options_init_sized(ctypes.byref(opts),
                                          ctypes.sizeof(opts))
        opts.threads = threads
        opts.cpu_isa = cpu_isa.encode() if cpu_isa is not None else None
        opts.cache_dir = cache_dir.encode() if cache_dir is not None else None
        dev = ctypes.c_void_p()
        st = lib.mha_device_open(ctx, spec.encode() if spec else None,
                                 ctypes.byref(opts), ctypes.byref(dev))
        if st != 0:
            try:
                _check(ctx, st)
            finally:
                lib.mha_context_destroy(ctx)
        self._ctx, self._ptr = ctx, dev
        info = _capi.DeviceInfo()
        self.check(lib.mha_device_info_of(dev, ctypes.byref(info)))
        self._info = _info_dict(info, info.is_default)

    # ---- the shared plumbing of Device, Tensor and MultiheadAttention ----

    def check(self, status):
        """Raises the libmha error of a failed call on this device's
        context, with its message. Call it while holding ``lock``."""
        _check(self._ctx, status)

    def adopt(self, child):
        """Registers a layer or tensor to be closed with the device."""
        self._children.add(child)

    # ---- public ----

    @property
    def spec(self):
        """The device's spec, e.g. "vulkan:0"."""
        return self._info["spec"]

    @property
    def info(self):
        """The device's description (the fields of ``devices()``)."""
        return dict(self._info)

    @property
    def fp16(self):
        """True when the device stores fp16 (layers with dtype="float16")."""
        return "fp16-storage" in self._info["features"]

    def memory_usage(self):
        """(in_use, peak) bytes of device memory libmha holds on it."""
        with self.lock:
            used, peak = ctypes.c_uint64(), ctypes.c_uint64()
            self.check(self._lib.mha_device_memory_usage(
                self.handle("Device.memory_usage"), ctypes.byref(used),
                ctypes.byref(peak)))
            return used.value, peak.value

    def variants(self, kind):
        """The kernel variants of kind ("matmul" or "attention") that fit
        the device (mha_device_variants), by name; [] on the CPU backend.
        Which one a node ran is the ``variant`` of its ``profile`` entry."""
        lib = self._lib
        with self.lock:
            ptr, n = self.handle("Device.variants"), ctypes.c_int()
            self.check(lib.mha_device_variants(ptr, kind.encode(), None, 0,
                                               ctypes.byref(n)))
            names = (ctypes.c_char_p * max(n.value, 1))()
            self.check(lib.mha_device_variants(ptr, kind.encode(), names,
                                               n.value, ctypes.byref(n)))
        return [names[i].decode() for i in range(n.value)]

    def profile_start(self):
        """Starts timing every node the device runs (a projection, the
        attention, ...), forgetting earlier entries; costs a timestamp per
        node (mha_device_profile_start)."""
        with self.lock:
            self.check(self._lib.mha_device_profile_start(
                self.handle("Device.profile_start")))

    def profile_read(self):
        """The ProfileEntry of every node finished since profile_start,
        oldest first (the first 4096). BadStateError when not profiling."""
        lib = self._lib
        with self.lock:
            ptr, n = self.handle("Device.profile_read"), ctypes.c_int()
            self.check(lib.mha_device_profile_read(ptr, None, 0,
                                                   ctypes.byref(n)))
            cap = min(n.value, _PROFILE_KEPT)
            entries = (_capi.ProfileEntry * max(cap, 1))()
            self.check(lib.mha_device_profile_read(ptr, entries, cap,
                                                   ctypes.byref(n)))
        return [ProfileEntry(e.op.decode(), e.ms, bool(e.device_clock),
                             e.variant.decode() if e.variant else None)
                for e in entries[:min(n.value, cap)]]

    def profile_stop(self):
        """Stops timing and forgets the entries (nothing when not
        profiling)."""
        with self.lock:
            self.check(self._lib.mha_device_profile_stop(
                self.handle("Device.profile_stop")))

    @contextlib.contextmanager
    def profile(self):
        """``with device.profile() as nodes: layer(x, x, x)``: nodes, a
        list, holds the block's ProfileEntry values once it ends."""
        nodes = []
        self.profile_start()
        try:
            yield nodes
            nodes.extend(self.profile_read())
        finally:
            self.profile_stop()

    def close(self):
        """Closes every layer and tensor on the device, then the device and
        its context. Closing twice does nothing."""
        with self.lock:
            for child in list(self._children):
                child.close()
            if self._ptr is not None:
                self.check(self._lib.mha_device_destroy(self._ptr))
                self._ptr = None
            if self._ctx is not None:
                self._lib.mha_context_destroy(self._ctx)
                self._ctx = None

    def __repr__(self):
        state = "closed" if self.closed else self._info["name"]
        return "libmha.Device(%r: %s)" % (self.spec, state)


_shared = {}
_shared_lock = threading.Lock()


def resolve(device):
    """A Device for a Device, a spec string or None. Specs open one shared
    Device per spec per process (so layers and tensors made with the same
    spec can be used together)."""
    if isinstance(device, Device):
        return device
    if device is not None and not isinstance(device, str):
        raise TypeError("device must be a libmha.Device, a spec string or "
                        "None, not %s" % type(device).__name__)
    with _shared_lock:
        dev = _shared.get(device)
        if dev is None or dev.closed:
            dev = _shared[device] = Device(device)
        return dev
