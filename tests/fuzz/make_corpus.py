#!/usr/bin/env python3
"""make_corpus.py: writes the seed corpora of the harnesses in tests/fuzz
(corpus/<harness>/): valid inputs that reach each harness's deepest checks,
for the fuzzer to mutate. Rerun after changing a harness's input format:
    /usr/bin/python3 tests/fuzz/make_corpus.py"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def write(harness, name, data):
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, meta=None, dtype="F32"):
    fmt = {"F32": "<f", "F16": "<e", "F64": "<d"}[dtype]
    header, blob = {}, b""
    if meta:
        header["__metadata__"] = meta
    for name, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        data = b"".join(struct.pack(fmt, 0.01 * i) for i in range(n))
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blob


def safetensors_seeds():
    E = 4
    packed = [("in_proj_weight", [3 * E, E]), ("in_proj_bias", [3 * E]),
              ("out_proj.weight", [E, E]), ("out_proj.bias", [E]),
              ("bias_k", [1, 1, E]), ("bias_v", [1, 1, E])]
    split = [("m.q_proj_weight", [E, E]), ("m.k_proj_weight", [E, 2]),
             ("m.v_proj_weight", [E, 3]), ("m.in_proj_bias", [3 * E]),
             ("m.out_proj.weight", [E, E]), ("m.out_proj.bias", [E])]
    write("safetensors", "packed_f32", safetensors(packed, {"format": "pt"}))
    write("safetensors", "packed_f16", safetensors(packed, dtype="F16"))
    write("safetensors", "split_f64", safetensors(split, dtype="F64"))
    write("safetensors", "empty_header", struct.pack("<Q", 2) + b"{}")


def forward_seeds():
    # fuzz_forward_args.c's format: E, H, flags, dtype, kdim, vdim; then per
    # array: ndim byte, dtype, 4 dims; masks present with 0x80; then flags
    # (causal 1, need_weights 2, average 4, device path 8), capacities, and
    # for the device path two result tensors (ndim byte, 4 dims).
    def array(ndim, dims, dtype=0, mask=False):
        b = (0x80 | ndim) if mask else ndim + 1
        return bytes([b, dtype] + dims + [0] * (4 - len(dims)))

    def seed(cfg, q, k, v, kpm, am, g, rest=b""):
        return bytes(cfg) + q + k + v + kpm + am + bytes([g, 0]) + rest

    unbatched = seed([4, 2, 1, 0, 0, 0], array(2, [3, 4]), array(2, [5, 4]),
                     array(2, [5, 4]), array(1, [5], 2, True),
                     array(2, [3, 5], 0, True), 0x0f,
                     bytes([2, 3, 4, 0, 0, 2, 3, 5, 0, 0]))
    batched = seed([4, 2, 0x0f, 0, 0, 0], array(3, [2, 3, 4]),
                   array(3, [2, 3, 4]), array(3, [2, 3, 4]),
                   array(2, [2, 3], 2, True), array(3, [4, 3, 3], 2, True),
                   0x03)
    kvdims = seed([4, 1, 0x01, 0, 2, 3], array(3, [3, 1, 4]),
                  array(3, [2, 1, 2]), array(3, [2, 1, 3]),
                  bytes(6), bytes(6), 0x02)  # masks absent
    write("forward_args", "unbatched_masks", unbatched)
    write("forward_args", "batched_bias_kv", batched)
    write("forward_args", "kdim_vdim", kvdims)


def vk_cache_seed():
    uuid = bytes(range(16))
    driver = struct.pack("<IIII", 32, 1, 0x10005, 0) + uuid + bytes(40)
    head = b"MHAVKPC1" + struct.pack("<QQ", len(driver), fnv1a(driver))
    write("vk_cache", "valid", head + driver)
    write("vk_cache", "valid_trailing", head + driver + b"\0")


def cl_cache_seed():
    payload = bytes(range(64))
    head = b"MHACLB1\n" + struct.pack("<QQQ", 0x0123456789abcdef,
                                      len(payload), fnv1a(payload))
    write("cl_cache", "valid", head + payload)
    write("cl_cache", "valid_trailing", head + payload + b"\0")


safetensors_seeds()
forward_seeds()
vk_cache_seed()
cl_cache_seed()
