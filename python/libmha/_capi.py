"""_capi: the ctypes mirror of include/mha.h and the loading of libmha.so.

Every struct here copies its C layout field for field
(python/tests/test_abi.py holds them to tests/abi/libmha.abi); a struct
with a leading struct_size is filled by the exported ``*_init_sized``
function with ``ctypes.sizeof`` of the mirror, as mha.h's ``*_init`` macros
do for C callers. The library is found, in order, at ``$MHA_LIBRARY``,
beside the installed package (the relative path that ``cmake --install``
writes into ``_install_paths.py``), in the build tree of the source
checkout (``build/libmha.so.0.1``), and by its soname through the dynamic
loader's search path (ldconfig, ``LD_LIBRARY_PATH``).
"""
import ctypes
import os
import threading

#: The ABI this package was written for: libmha's soname while 0.x.
ABI_VERSION = (0, 1)
SONAME = "libmha.so.%d.%d" % ABI_VERSION

MAX_DIMS = 4
# mha_dtype
F32, F16, BOOL, I32 = 0, 1, 2, 3
# MHA_STATUS_LIST, in order
STATUS_NAMES = (
    "OK", "INVALID_ARGUMENT", "SHAPE_MISMATCH", "DTYPE_MISMATCH",
    "OUT_OF_MEMORY", "OVERFLOW", "NOT_FOUND", "UNSUPPORTED",
    "MISSING_WEIGHT", "IO", "CORRUPT_FILE", "NO_DEVICE", "DEVICE_ERROR",
    "DEVICE_LOST", "BUFFER_TOO_SMALL", "LIMIT_REACHED", "BAD_STATE")
DEVICE_KINDS = ("discrete-gpu", "integrated-gpu", "virtual-gpu", "cpu",
                "software", "other")
# MHA_FEATURE_* bits, in mha-info's order
FEATURES = (
    (1 << 0, "fp16-storage"), (1 << 1, "fp16-math"), (1 << 2, "subgroups"),
    (1 << 3, "fused-attention"), (1 << 4, "avx2"), (1 << 6, "avx512"),
    (1 << 5, "neon"))
FEATURE_FP16_STORAGE = 1 << 0
# mha_layout, mha_causal
LAYOUTS = {"bthd": 0, "bhtd": 1}
# mha_rope_style
ROPE_STYLES = {None: 0, "none": 0, "neox": 1, "gptj": 2}
CAUSALS = {None: 0, False: 0, True: 1, "top_left": 1, "bottom_right": 2}

_c_int64_p = ctypes.POINTER(ctypes.c_int64)


class ContextOptions(ctypes.Structure):
    """mha_context_options."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("allocator", ctypes.c_void_p),
                ("log", ctypes.c_void_p),
                ("log_user", ctypes.c_void_p),
                ("log_level", ctypes.c_int),
                ("backends", ctypes.c_char_p)]


class DeviceOptions(ctypes.Structure):
    """mha_device_options."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("threads", ctypes.c_int),
                ("cpu_isa", ctypes.c_char_p),
                ("cache_dir", ctypes.c_char_p)]


class DeviceInfo(ctypes.Structure):
    """mha_device_info (fixed size, filled by the library)."""
    _fields_ = [("backend", ctypes.c_char * 16),
                ("backend_index", ctypes.c_int),
                ("index", ctypes.c_int),
                ("kind", ctypes.c_int),
                ("vendor", ctypes.c_char * 64),
                ("name", ctypes.c_char * 128),
                ("driver", ctypes.c_char * 128),
                ("memory_bytes", ctypes.c_uint64),
                ("max_buffer_bytes", ctypes.c_uint64),
                ("features", ctypes.c_uint32),
                ("compute_units", ctypes.c_uint32),
                ("max_workgroup_size", ctypes.c_uint32),
                ("shared_memory_bytes", ctypes.c_uint32),
                ("subgroup_size", ctypes.c_uint32),
                ("score", ctypes.c_int),
                ("is_default", ctypes.c_int),
                ("details", ctypes.c_char * 256)]


class LayerConfig(ctypes.Structure):
    """mha_layer_config."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("embed_dim", ctypes.c_int64),
                ("num_heads", ctypes.c_int64),
                ("dropout", ctypes.c_float),
                ("bias", ctypes.c_int),
                ("add_bias_kv", ctypes.c_int),
                ("add_zero_attn", ctypes.c_int),
                ("kdim", ctypes.c_int64),
                ("vdim", ctypes.c_int64),
                ("batch_first", ctypes.c_int),
                ("dtype", ctypes.c_int)]


class ForwardArgs(ctypes.Structure):
    """mha_forward_args."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("query", ctypes.c_void_p),
                ("key", ctypes.c_void_p),
                ("value", ctypes.c_void_p),
                ("key_padding_mask", ctypes.c_void_p),
                ("attn_mask", ctypes.c_void_p),
                ("is_causal", ctypes.c_int),
                ("need_weights", ctypes.c_int),
                ("average_attn_weights", ctypes.c_int),
                ("output", ctypes.c_void_p),
                ("weights", ctypes.c_void_p),
                ("head_gates", ctypes.c_void_p),
                ("head_outputs", ctypes.c_void_p),
                ("save_for_backward", ctypes.c_int)]


class HostArray(ctypes.Structure):
    """mha_host_array (fixed size)."""
    _fields_ = [("data", ctypes.c_void_p),
                ("dtype", ctypes.c_int),
                ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * MAX_DIMS)]


class HostForwardArgs(ctypes.Structure):
    """mha_host_forward_args."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("query", HostArray),
                ("key", HostArray),
                ("value", HostArray),
                ("key_padding_mask", HostArray),
                ("attn_mask", HostArray),
                ("is_causal", ctypes.c_int),
                ("need_weights", ctypes.c_int),
                ("average_attn_weights", ctypes.c_int),
                ("output", ctypes.c_void_p),
                ("output_count", ctypes.c_size_t),
                ("weights", ctypes.c_void_p),
                ("weights_count", ctypes.c_size_t)]


class AttentionArgs(ctypes.Structure):
    """mha_attention_args."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("q", ctypes.c_void_p),
                ("k", ctypes.c_void_p),
                ("v", ctypes.c_void_p),
                ("out", ctypes.c_void_p),
                ("layout", ctypes.c_int),
                ("scale", ctypes.c_float),
                ("causal", ctypes.c_int),
                ("window", ctypes.c_int64),
                ("softcap", ctypes.c_float),
                ("alibi", ctypes.c_int),
                ("alibi_slopes", ctypes.c_void_p),
                ("sinks", ctypes.c_void_p),
                ("bias", ctypes.c_void_p),
                ("kv_lens", ctypes.c_void_p)]


class KVCacheConfig(ctypes.Structure):
    """mha_kv_cache_config."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("capacity", ctypes.c_int64),
                ("num_sequences", ctypes.c_int64),
                ("num_kv_heads", ctypes.c_int64),
                ("head_dim", ctypes.c_int64),
                ("dtype", ctypes.c_int),
                ("window", ctypes.c_int64)]


class DecoderConfig(ctypes.Structure):
    """mha_decoder_config."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("embed_dim", ctypes.c_int64),
                ("num_heads", ctypes.c_int64),
                ("num_kv_heads", ctypes.c_int64),
                ("head_dim", ctypes.c_int64),
                ("rope_style", ctypes.c_int),
                ("rope_dims", ctypes.c_int64),
                ("rope_theta", ctypes.c_float),
                ("rope_scaling", ctypes.c_float),
                ("window", ctypes.c_int64),
                ("alibi", ctypes.c_int),
                ("softcap", ctypes.c_float),
                ("sinks", ctypes.c_int),
                ("qkv_bias", ctypes.c_int),
                ("o_bias", ctypes.c_int),
                ("scale", ctypes.c_float)]


class DecoderForwardArgs(ctypes.Structure):
    """mha_decoder_forward_args."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("x", ctypes.c_void_p),
                ("positions", ctypes.c_void_p),
                ("cache", ctypes.c_void_p),
                ("output", ctypes.c_void_p),
                ("head_gates", ctypes.c_void_p),
                ("save_for_backward", ctypes.c_int)]


class BackwardArgs(ctypes.Structure):
    """mha_backward_args."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("grad_output", ctypes.c_void_p),
                ("grad_query", ctypes.c_void_p),
                ("grad_key", ctypes.c_void_p),
                ("grad_value", ctypes.c_void_p),
                ("grads", ctypes.c_void_p),
                ("accumulate", ctypes.c_int),
                ("grad_head_gates", ctypes.c_void_p)]


class DecoderBackwardArgs(ctypes.Structure):
    """mha_decoder_backward_args."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("grad_output", ctypes.c_void_p),
                ("grad_x", ctypes.c_void_p),
                ("grads", ctypes.c_void_p),
                ("accumulate", ctypes.c_int),
                ("grad_head_gates", ctypes.c_void_p)]


class AdamWConfig(ctypes.Structure):
    """mha_adamw_config."""
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("beta1", ctypes.c_float),
                ("beta2", ctypes.c_float),
                ("eps", ctypes.c_float),
                ("weight_decay", ctypes.c_float)]


class ProfileEntry(ctypes.Structure):
    """mha_profile_entry (fixed size, filled by the library)."""
    _fields_ = [("op", ctypes.c_char_p),
                ("ms", ctypes.c_double),
                ("device_clock", ctypes.c_int),
                ("variant", ctypes.c_char_p)]


#: The C structs mirrored here, by their C names (for the ABI test).
STRUCTS = {
    "mha_context_options": ContextOptions,
    "mha_device_options": DeviceOptions,
    "mha_device_info": DeviceInfo,
    "mha_layer_config": LayerConfig,
    "mha_forward_args": ForwardArgs,
    "mha_host_array": HostArray,
    "mha_host_forward_args": HostForwardArgs,
    "mha_attention_args": AttentionArgs,
    "mha_kv_cache_config": KVCacheConfig,
    "mha_decoder_config": DecoderConfig,
    "mha_decoder_forward_args": DecoderForwardArgs,
    "mha_backward_args": BackwardArgs,
    "mha_decoder_backward_args": DecoderBackwardArgs,
    "mha_adamw_config": AdamWConfig,
    "mha_profile_entry": ProfileEntry,
}

_vp = ctypes.c_void_p
_pp = ctypes.POINTER(ctypes.c_void_p)
_st = ctypes.c_int
# name: (restype, argtypes); every mha_status function returns int.
_PROTOTYPES = {
    "mha_status_str": (ctypes.c_char_p, [ctypes.c_int]),
    "mha_version": (ctypes.c_char_p, []),
    "mha_context_options_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_context_create": (_st, [_vp, _pp]),
    "mha_context_destroy": (_st, [_vp]),
    "mha_context_errmsg": (ctypes.c_char_p, [_vp]),
    "mha_device_count": (_st, [_vp, ctypes.POINTER(ctypes.c_int)]),
    "mha_device_get_info": (_st, [_vp, ctypes.c_int, _vp]),
    "mha_device_options_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_device_open": (_st, [_vp, ctypes.c_char_p, _vp, _pp]),
    "mha_device_info_of": (_st, [_vp, _vp]),
    "mha_device_memory_usage": (_st, [_vp, ctypes.POINTER(ctypes.c_uint64),
                                      ctypes.POINTER(ctypes.c_uint64)]),
    "mha_device_destroy": (_st, [_vp]),
    "mha_tensor_create": (_st, [_vp, ctypes.c_int, ctypes.c_int, _c_int64_p,
                                _pp]),
    "mha_tensor_upload": (_st, [_vp, _vp, ctypes.c_size_t]),
    "mha_tensor_download": (_st, [_vp, _vp, ctypes.c_size_t]),
    "mha_tensor_destroy": (_st, [_vp]),
    "mha_tensor_view": (_st, [_vp, ctypes.c_size_t, ctypes.c_int, _c_int64_p,
                              _c_int64_p, _pp]),
    "mha_layer_config_init_sized": (_st, [_vp, ctypes.c_size_t,
                                          ctypes.c_int64, ctypes.c_int64]),
    "mha_layer_create": (_st, [_vp, _vp, _pp]),
    "mha_layer_set_weight": (_st, [_vp, ctypes.c_char_p, _vp, ctypes.c_int,
                                   _c_int64_p]),
    "mha_layer_load_safetensors": (_st, [_vp, ctypes.c_char_p,
                                         ctypes.c_char_p]),
    "mha_layer_destroy": (_st, [_vp]),
    "mha_layer_prune_heads": (_st, [_vp, _c_int64_p, ctypes.c_int64]),
    "mha_layer_kept_heads": (_st, [_vp, _c_int64_p, ctypes.c_int64,
                                   _c_int64_p]),
    "mha_layer_save_safetensors": (_st, [_vp, ctypes.c_char_p,
                                         ctypes.c_char_p]),
    "mha_forward_args_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_layer_forward": (_st, [_vp, _vp]),
    "mha_host_forward_args_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_layer_forward_host": (_st, [_vp, _vp]),
    "mha_layer_output_size": (_st, [_vp, _vp,
                                    ctypes.POINTER(ctypes.c_size_t),
                                    ctypes.POINTER(ctypes.c_size_t)]),
    "mha_attention_args_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_attention": (_st, [_vp, _vp]),
    "mha_kv_cache_config_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_kv_cache_create": (_st, [_vp, _vp, _pp]),
    "mha_kv_cache_append": (_st, [_vp, ctypes.c_int64, _vp, _vp]),
    "mha_kv_cache_length": (_st, [_vp, ctypes.c_int64, _c_int64_p]),
    "mha_kv_cache_truncate": (_st, [_vp, ctypes.c_int64, ctypes.c_int64]),
    "mha_kv_cache_clear": (_st, [_vp]),
    "mha_kv_cache_destroy": (_st, [_vp]),
    "mha_decoder_config_init_sized": (_st, [_vp, ctypes.c_size_t,
                                            ctypes.c_int64, ctypes.c_int64]),
    "mha_decoder_create": (_st, [_vp, _vp, _pp]),
    "mha_decoder_set_weight": (_st, [_vp, ctypes.c_char_p, _vp, ctypes.c_int,
                                     _c_int64_p]),
    "mha_decoder_load_safetensors": (_st, [_vp, ctypes.c_char_p,
                                           ctypes.c_char_p]),
    "mha_decoder_forward_args_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_decoder_forward": (_st, [_vp, _vp]),
    "mha_decoder_destroy": (_st, [_vp]),
    "mha_decoder_prune_heads": (_st, [_vp, _c_int64_p, ctypes.c_int64]),
    "mha_decoder_kept_heads": (_st, [_vp, _c_int64_p, ctypes.c_int64,
                                     _c_int64_p]),
    "mha_tensor_get_shape": (_st, [_vp, ctypes.POINTER(ctypes.c_int),
                                   ctypes.POINTER(ctypes.c_int), _c_int64_p]),
    "mha_device_profile_start": (_st, [_vp]),
    "mha_device_profile_stop": (_st, [_vp]),
    "mha_device_profile_read": (_st, [_vp, _vp, ctypes.c_int,
                                      ctypes.POINTER(ctypes.c_int)]),
    "mha_device_variants": (_st, [_vp, ctypes.c_char_p,
                                  ctypes.POINTER(ctypes.c_char_p),
                                  ctypes.c_int,
                                  ctypes.POINTER(ctypes.c_int)]),
    "mha_gradients_create": (_st, [_vp, _pp]),
    "mha_decoder_gradients_create": (_st, [_vp, _pp]),
    "mha_gradients_zero": (_st, [_vp]),
    "mha_gradients_get": (_st, [_vp, ctypes.c_char_p, _pp]),
    "mha_gradients_destroy": (_st, [_vp]),
    "mha_backward_args_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_layer_backward": (_st, [_vp, _vp]),
    "mha_decoder_backward_args_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_decoder_backward": (_st, [_vp, _vp]),
    "mha_adamw_config_init_sized": (_st, [_vp, ctypes.c_size_t]),
    "mha_adamw_create": (_st, [_vp, _vp, _pp]),
    "mha_decoder_adamw_create": (_st, [_vp, _vp, _pp]),
    "mha_adamw_step": (_st, [_vp, _vp, ctypes.c_float]),
    "mha_adamw_steps": (ctypes.c_int64, [_vp]),
    "mha_adamw_destroy": (_st, [_vp]),
}

_here = os.path.dirname(os.path.abspath(__file__))
_loaded = None
_load_lock = threading.Lock()


def _candidates():
    """Paths to try, best first, with where each came from."""
    env = os.environ.get("MHA_LIBRARY")
    if env:
        yield env, "MHA_LIBRARY"
        return
    try:
        from . import _install_paths  # written by cmake --install
        yield (os.path.normpath(os.path.join(
            _here, _install_paths.LIBRARY_DIR, SONAME)),
            "beside the installed package")
    except ImportError:
        pass
    checkout = os.path.dirname(os.path.dirname(_here))
    yield os.path.join(checkout, "build", SONAME), "the source tree's build/"
    yield SONAME, "the dynamic loader's search path"


def _declare(lib):
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def library_path():
    """The path of the libmha shared library in use (loading it if needed)."""
    return lib()._mha_path


def lib():
    """The loaded libmha (a ctypes.CDLL, which releases the GIL per call).

    Raises LibraryNotFoundError naming every place it looked, or when the
    library found has another ABI version than this package's."""
    global _loaded
    with _load_lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _load():
    from .errors import LibraryNotFoundError
    tried = []
    for path, origin in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append("%s (%s): no such file" % (path, origin))
            continue
        try:
            handle = ctypes.CDLL(path)
        except OSError as e:
            tried.append("%s (%s): %s" % (path, origin, e))
            continue
        _declare(handle)
        version = handle.mha_version().decode()
        if tuple(int(x) for x in version.split(".")[:2]) != ABI_VERSION:
            raise LibraryNotFoundError(
                "libmha: %s is version %s; this package needs %d.%d.x"
                % (path, version, *ABI_VERSION))
        handle._mha_path = path
        return handle
    raise LibraryNotFoundError(
        "libmha: libmha shared library not found; set MHA_LIBRARY to its "
        "path. Tried: " + "; ".join(tried))
