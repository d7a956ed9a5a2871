"""conftest: the devices the suite runs on and the shared helpers.

Every device libmha finds is tested (cpu, vulkan:0, opencl:0 here). A
backend named by MHA_REQUIRE (scripts/test.sh sets vulkan,opencl) that has
no device fails the run instead of shrinking it, so a broken driver setup
cannot pass as "fewer devices"."""
import json
import os
import struct

import numpy as np
import pytest

import libmha


def _specs():
    specs = [d["spec"] for d in libmha.devices()]
    # One device per backend: its first (the suite's cost grows per device).
    seen, out = set(), []
    for s in specs:
        backend = s.split(":")[0]
        if backend not in seen:
            seen.add(backend)
            out.append(s)
    return out


SPECS = _specs()
FP16_SPECS = [d["spec"] for d in libmha.devices()
              if d["spec"] in SPECS and "fp16-storage" in d["features"]]


def pytest_sessionstart(session):
    required = [b for b in os.environ.get("MHA_REQUIRE", "").split(",") if b]
    missing = [b for b in required
               if not any(s.startswith(b + ":") for s in SPECS)]
    if missing:
        raise pytest.UsageError(
            "MHA_REQUIRE names %s, but libmha (%s) found no such device; "
            "found: %s" % (",".join(missing), libmha.library_path(),
                           ", ".join(SPECS)))


_devices = {}


def get_device(spec):
    """One open libmha.Device per spec for the whole session."""
    if spec not in _devices:
        _devices[spec] = libmha.Device(spec)
    return _devices[spec]


@pytest.fixture(params=SPECS)
def device(request):
    """Each tested device, open."""
    return get_device(request.param)


def tolerance(dtype):
    """DESIGN.md's bounds: fp32 1e-4, fp16 storage 1e-2."""
    return 1e-4 if dtype == "float32" else 1e-2


def rng(seed=0):
    """A fixed-seed NumPy generator."""
    return np.random.default_rng(seed)


def random_mha(embed_dim, num_heads, cfg, seed):
    """A torch.nn.MultiheadAttention in eval mode with every parameter
    random (PyTorch zeroes the biases)."""
    import torch
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(embed_dim, num_heads, **cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m


def write_safetensors(path, tensors):
    """A .safetensors file (8-byte header length, JSON header, data)."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
