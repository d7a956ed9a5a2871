"""The ctypes mirrors of _capi.py have the C layout recorded in
tests/abi/libmha.abi (scripts/check-abi.sh keeps that file true to mha.h):
every mirrored field at its offset with its size, fixed-size structs at
their size, and the status, dtype and feature constants the package uses.
A field the C side appended to a struct with struct_size may be missing
from a mirror (the library then sees the older, smaller struct)."""
import ctypes
import os

from libmha import _capi

ABI = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "abi",
                   "libmha.abi")


def _read_abi():
    fields, sizes, consts = {}, {}, {}
    with open(ABI) as f:
        for line in f:
            w = line.split()
            if w[0] == "field":
                struct, field = w[1].split(".")
                fields.setdefault(struct, []).append(
                    (field, int(w[3]), int(w[5])))
            elif w[0] == "struct":
                sizes[w[1]] = int(w[3])
            elif w[0] == "const":
                consts[w[1]] = int(w[2])
    return fields, sizes, consts


def test_struct_layouts():
    fields, sizes, _ = _read_abi()
    for cname, mirror in _capi.STRUCTS.items():
        recorded = fields[cname]
        mine = [(name, getattr(mirror, name).offset,
                 ctypes.sizeof(ctype)) for name, ctype in mirror._fields_]
        assert mine == recorded[:len(mine)], cname
        if cname in sizes:
            assert ctypes.sizeof(mirror) == sizes[cname], cname
            assert len(mine) == len(recorded), cname
        else:
            assert mine[0][0] == "struct_size", cname


def test_constants():
    _, _, consts = _read_abi()
    for i, name in enumerate(_capi.STATUS_NAMES):
        assert consts["MHA_" + name] == i
    assert consts["MHA_BAD_STATE"] == \
        len(_capi.STATUS_NAMES) - 1
    for name in ("F32", "F16", "BOOL", "I32", "MAX_DIMS"):
        assert consts["MHA_" + name] == getattr(_capi, name)
    for name, value in _capi.LAYOUTS.items():
        assert consts["MHA_LAYOUT_" + name.upper()] == value
    for name, value in _capi.CAUSALS.items():
        if isinstance(name, str):
            assert consts["MHA_CAUSAL_" + name.upper()] == value
    for name, value in _capi.ROPE_STYLES.items():
        if isinstance(name, str):
            assert consts["MHA_ROPE_" + name.upper()] == value
    for bit, name in _capi.FEATURES:
        c = "MHA_FEATURE_" + name.upper().replace("-", "_")
        assert consts[c] == bit, c
    kinds = ["DISCRETE_GPU", "INTEGRATED_GPU", "VIRTUAL_GPU", "CPU",
             "SOFTWARE", "OTHER"]
    for i, k in enumerate(kinds):
        assert consts["MHA_DEVICE_" + k] == i
        assert _capi.DEVICE_KINDS[i] == k.lower().replace("_", "-")
