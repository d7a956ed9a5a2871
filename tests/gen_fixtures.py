#!/usr/bin/env python3
# gen_fixtures.py: writes the PyTorch reference fixtures (tests/fixtures/*.safetensors
# and cases.h) that the C test suite compares libmha's forward against.
#
# Run it with the Python that has PyTorch, on Debian /usr/bin/python3:
#
#     /usr/bin/python3 tests/gen_fixtures.py                 # regenerate all
#     /usr/bin/python3 tests/gen_fixtures.py --only NAME,...  # some cases
#     /usr/bin/python3 tests/gen_fixtures.py --seed 7 --out /tmp/fx   # live data
#     /usr/bin/python3 tests/gen_fixtures.py --list
#     /usr/bin/python3 tests/gen_fixtures.py --verify tests/fixtures
#
# Each case builds a torch.nn.MultiheadAttention in eval mode (float32), runs
# it, and runs a float64 deep copy on the same inputs. The expected values are
# an explicit float64 implementation of F.multi_head_attention_forward with
# libmha's rules (is_causal, a fully masked row gives 0, see
# tests/fixtures/README.md); the script asserts that it matches torch's float64
# result to 1e-9 wherever torch is finite, and that torch's float32 result is
# within the case's tolerance. Same seed, same torch: byte-identical files.

import argparse
import copy
import json
import math
import os
import struct
import sys
import zlib

# one BLAS thread: the float64 reference is then reproducible bit for bit
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tools"))
from export_safetensors import ST_DTYPES as _ST_DTYPES  # noqa: E402
from export_safetensors import write_safetensors  # noqa: E402

try:
    import torch
    import torch.nn as nn
except ImportError:  # pragma: no cover
    sys.exit("gen_fixtures.py needs PyTorch: run it with /usr/bin/python3 "
             "(Debian python3-torch)")

DEFAULT_SEED = 1234
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures")
REF_TOL = 1e-9  # explicit float64 reference vs torch float64, relative to scale

# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------

# Every key of a case, with its default. Layout: "seq" (L,N,E), "batch"
# (N,L,E, batch_first=1), "unbatched" (L,E). Masks: None, or a dict:
#   attn_mask: {"dtype": "bool"|"f32", "dims": 2|3, "full_rows": [(b, h, i)...]}
#   key_padding_mask: {"dtype": "bool"|"f32", "full_batch": [n...]}
# full_rows / full_batch ask for fully masked rows (every key masked).
DEFAULTS = dict(
    E=16, H=2, L=5, S=None, N=2, kdim=None, vdim=None, bias=True,
    add_bias_kv=False, add_zero_attn=False, layout="seq", self_attn=True,
    is_causal=False, need_weights=True, average=True, attn_mask=None,
    key_padding_mask=None, scale=1.0, special=None, tolerance=1e-4,
    description="",
)

CASES = []


def case(name, **kw):
    for k in kw:
        if k not in DEFAULTS:
            raise KeyError("case %s: unknown key %s" % (name, k))
    c = dict(DEFAULTS)
    c.update(kw)
    c["name"] = name
    # does the case ask for fully masked rows (torch NaN)?
    specs = [m for m in (c["attn_mask"], c["key_padding_mask"]) if m]
    c["expect_full"] = (any(m.get("full_rows") or m.get("full_batch") or m.get("first_key")
                            for m in specs) and not c["add_bias_kv"] and not c["add_zero_attn"])
    if c["S"] is None:
        c["S"] = c["L"]
    if c["self_attn"]:
        assert c["S"] == c["L"] and c["kdim"] is None and c["vdim"] is None
    if c["layout"] == "unbatched":
        c["N"] = 1
    assert c["E"] % c["H"] == 0
    assert all(x["name"] != name for x in CASES), name
    CASES.append(c)


AB2 = {"dtype": "bool", "dims": 2}
AB3 = {"dtype": "bool", "dims": 3}
AF2 = {"dtype": "f32", "dims": 2}
AF3 = {"dtype": "f32", "dims": 3}
KB = {"dtype": "bool"}
KF = {"dtype": "f32"}

# layouts, self / cross, shapes
case("self_basic_e16_h2", description="self-attention, (L,N,E), averaged weights")
case("self_batch_first_e16_h2", layout="batch",
     description="self-attention, batch_first (N,L,E)")
case("self_unbatched_e16_h2", layout="unbatched",
     description="self-attention, unbatched (L,E)")
case("self_unbatched_batch_first_e16_h2", layout="unbatched", average=False,
     description="unbatched input with batch_first=1 (ignored), per-head weights")
case("self_no_weights_e16_h2", need_weights=False, N=3,
     description="self-attention without weights (fused path allowed)")
case("self_per_head_weights_e16_h4", H=4, average=False, layout="batch",
     description="per-head weights (N,H,L,S)")
case("cross_l5_s7_e16_h2", self_attn=False, S=7,
     description="cross-attention, S > L, (L,N,E)")
case("cross_l6_s3_batch_first", self_attn=False, L=6, S=3, layout="batch",
     description="cross-attention, S < L, batch_first")
case("cross_unbatched_l4_s6", self_attn=False, L=4, S=6, layout="unbatched",
     average=False, description="cross-attention, unbatched, per-head weights")
case("cross_kdim12_vdim20_e16_h2", self_attn=False, S=6, kdim=12, vdim=20,
     description="kdim and vdim differ from E: separate q/k/v weights")
case("cross_kdim8_e16_h4", self_attn=False, S=4, kdim=8, H=4,
     description="kdim differs, vdim == E: separate q/k/v weights")
case("cross_vdim24_e16_h2_batch_first", self_attn=False, S=5, L=3, vdim=24,
     layout="batch", description="vdim differs, kdim == E, batch_first")
case("cross_kdim_vdim_unbatched", self_attn=False, L=3, S=5, kdim=7, vdim=9,
     layout="unbatched", description="odd kdim/vdim, unbatched")
case("cross_batch4_e32_h4", self_attn=False, N=4, E=32, H=4, L=6, S=9,
     layout="batch", description="batch of 4, S != L")

# heads and odd sizes
case("self_h1_e8", E=8, H=1, description="one head, d = 8")
case("self_h3_e24", E=24, H=3, L=7, description="E=24 H=3 (odd head count)")
case("self_h4_e32", E=32, H=4, layout="batch", description="H=4, d=8")
case("self_h8_e64", E=64, H=8, L=6, N=2, average=False,
     description="H=8, d=8, per-head weights")
case("self_h16_e64", E=64, H=16, L=4, N=1, layout="batch",
     description="H=16, d=4")
case("self_h16_e128", E=128, H=16, L=3, N=1, need_weights=False,
     description="H=16, d=8, E=128")
case("self_e20_h5_l3", E=20, H=5, L=3, N=3,
     description="H=5, d=4, N=3")
case("self_l1", L=1, N=3, description="L = S = 1")
case("cross_l1_s9", self_attn=False, L=1, S=9, layout="batch",
     description="one query row")
case("cross_s1_l6", self_attn=False, L=6, S=1,
     description="one key: weights are all 1")
case("self_l257_e32_h4_nw0", E=32, H=4, L=257, N=1, layout="batch",
     need_weights=False,
     description="long sequence L=S=257 (tiles not aligned), no weights")
case("self_l257_causal_e16_h2_nw0", E=16, H=2, L=257, N=2, is_causal=True,
     need_weights=False,
     description="long causal sequence L=S=257, no weights")
case("cross_l33_s65_e32_h8", self_attn=False, E=32, H=8, L=33, S=65, N=1,
     layout="batch", average=True,
     description="L=33 S=65, weights averaged")

# attention masks
case("attn_mask_bool_2d", attn_mask=AB2, description="bool (L,S) attn_mask")
case("attn_mask_f32_2d", attn_mask=AF2,
     description="float additive (L,S) attn_mask with some -inf")
case("attn_mask_bool_3d", attn_mask=AB3, H=4, average=False,
     description="bool (N*H,L,S) attn_mask, per-head weights")
case("attn_mask_f32_3d_cross", attn_mask=AF3, self_attn=False, S=7,
     layout="batch", description="float (N*H,L,S) attn_mask, cross, batch_first")
case("attn_mask_f32_3d_unbatched", attn_mask=AF3, layout="unbatched", H=4,
     average=False, description="float (H,L,S) attn_mask, unbatched")
case("attn_mask_bool_2d_unbatched_cross", attn_mask=AB2, layout="unbatched",
     self_attn=False, L=4, S=6, description="bool (L,S) attn_mask, unbatched cross")

# key padding masks
case("kpm_bool", key_padding_mask=KB, self_attn=False, S=6,
     description="bool (N,S) key_padding_mask")
case("kpm_f32", key_padding_mask=KF, layout="batch",
     description="float additive (N,S) key_padding_mask, batch_first")
case("kpm_bool_unbatched", key_padding_mask=KB, layout="unbatched",
     self_attn=False, S=7, description="bool (S) key_padding_mask, unbatched")
case("kpm_f32_unbatched", key_padding_mask=KF, layout="unbatched",
     description="float (S) key_padding_mask, unbatched")
case("kpm_bool_attn_mask_f32_2d", key_padding_mask=KB, attn_mask=AF2,
     self_attn=False, S=6, description="bool key_padding_mask + float (L,S) attn_mask")
case("kpm_bool_attn_mask_bool_3d", key_padding_mask=KB, attn_mask=AB3,
     average=False, description="bool key_padding_mask + bool (N*H,L,S) attn_mask")
case("kpm_f32_attn_mask_f32_3d", key_padding_mask=KF, attn_mask=AF3,
     layout="batch",
     description="float key_padding_mask + float 3-D attn_mask (added, PyTorch>=2 rule)")
case("kpm_f32_attn_mask_bool_2d", key_padding_mask=KF, attn_mask=AB2,
     description="float key_padding_mask + bool 2-D attn_mask (PyTorch>=2 rule)")

# is_causal
case("causal_self", is_causal=True, description="is_causal without a mask")
case("causal_self_batch_first_h4", is_causal=True, layout="batch", H=4,
     average=False, description="is_causal, batch_first, per-head weights")
case("causal_cross_l5_s8", is_causal=True, self_attn=False, S=8,
     description="is_causal with S > L (top-left aligned)")
case("causal_cross_l8_s5", is_causal=True, self_attn=False, L=8, S=5,
     layout="batch", description="is_causal with S < L (top-left aligned)")
case("causal_unbatched", is_causal=True, layout="unbatched",
     description="is_causal, unbatched")
case("causal_attn_mask_bool_2d", is_causal=True, attn_mask=AB2,
     description="is_causal combined with a bool (L,S) attn_mask")
case("causal_attn_mask_f32_3d", is_causal=True, attn_mask=AF3, average=False,
     description="is_causal combined with a float (N*H,L,S) attn_mask")
case("causal_kpm_bool", is_causal=True, key_padding_mask=KB, self_attn=False,
     S=6, description="is_causal with a bool key_padding_mask")
case("causal_kpm_f32_batch_first", is_causal=True, key_padding_mask=KF,
     layout="batch", description="is_causal with a float key_padding_mask, batch_first")
case("causal_bias_kv", is_causal=True, add_bias_kv=True,
     description="is_causal with bias_k/bias_v: appended column never masked")
case("causal_zero_attn_kpm", is_causal=True, add_zero_attn=True,
     key_padding_mask=KB, layout="batch",
     description="is_causal with add_zero_attn and key_padding_mask")

# bias_k / bias_v, add_zero_attn, bias=False
case("bias_kv", add_bias_kv=True, description="add_bias_kv")
case("bias_kv_cross_kdim_vdim", add_bias_kv=True, self_attn=False, S=4,
     kdim=10, vdim=6, average=False, description="add_bias_kv with kdim/vdim")
case("zero_attn", add_zero_attn=True, layout="batch",
     description="add_zero_attn")
case("bias_kv_zero_attn", add_bias_kv=True, add_zero_attn=True, H=4,
     average=False, description="add_bias_kv and add_zero_attn, per-head weights")
case("bias_kv_zero_attn_masks", add_bias_kv=True, add_zero_attn=True,
     key_padding_mask=KB, attn_mask=AF3, self_attn=False, S=6,
     description="bias_kv + zero_attn with key_padding_mask and 3-D attn_mask")
case("bias_kv_zero_attn_unbatched", add_bias_kv=True, add_zero_attn=True,
     layout="unbatched", attn_mask=AB2,
     description="bias_kv + zero_attn, unbatched, bool attn_mask")
case("no_bias", bias=False, description="bias=False")
case("no_bias_kdim_vdim", bias=False, self_attn=False, S=6, kdim=12, vdim=8,
     layout="batch", description="bias=False with separate q/k/v weights")
case("no_bias_bias_kv_zero_attn", bias=False, add_bias_kv=True,
     add_zero_attn=True, description="bias=False with bias_k/bias_v and zero_attn")

# fully masked rows (libmha: head result 0, weights 0; PyTorch: NaN)
case("fully_masked_kpm_batch", key_padding_mask=dict(KB, full_batch=[1]),
     average=False, self_attn=False, S=6,
     description="key_padding_mask masks every key of batch item 1")
case("fully_masked_kpm_f32_unbatched",
     key_padding_mask=dict(KF, full_batch=[0]), layout="unbatched",
     description="float key_padding_mask of all -inf, unbatched")
case("fully_masked_attn_mask_row", attn_mask=dict(AB2, full_rows=[(0, 0, 2)]),
     description="bool (L,S) attn_mask with row 2 all True")
case("fully_masked_attn_mask_3d_one_head",
     attn_mask=dict(AF3, full_rows=[(1, 2, 0), (0, 0, 3)]), H=4,
     layout="batch", average=False,
     description="float 3-D attn_mask with -inf rows for single heads")
case("fully_masked_attn_mask_3d_avg",
     attn_mask=dict(AB3, full_rows=[(1, 1, 1)]), H=2,
     description="bool 3-D attn_mask, one head's row fully masked, averaged weights")
case("fully_masked_causal_kpm", is_causal=True, key_padding_mask=dict(KB, first_key=[0]),
     description="is_causal + key 0 padded in batch item 0: its row 0 fully masked")
case("fully_masked_no_bias_nw0", bias=False, need_weights=False,
     key_padding_mask=dict(KB, full_batch=[0]),
     description="bias=False: a fully masked row's output is exactly 0")
case("masked_all_keys_bias_kv", add_bias_kv=True,
     key_padding_mask=dict(KB, full_batch=[0]),
     description="all real keys masked but bias_k column remains: no NaN in torch")
case("masked_all_keys_zero_attn", add_zero_attn=True,
     attn_mask=dict(AB2, full_rows=[(0, 0, 1)]), layout="batch",
     description="attn_mask row all True but the zero-attn column remains")

# large magnitude, NaN, Inf
case("large_magnitude_1e3", scale=1e3, tolerance=0.1,
     description="|x| ~ 1e3: softmax near one-hot, tolerance scaled")
case("large_magnitude_1e3_cross_kdim", scale=1e3, tolerance=0.1,
     self_attn=False, S=6, kdim=12, vdim=10, need_weights=False, layout="batch",
     description="|x| ~ 1e3, cross with kdim/vdim, no weights")
case("nan_query", special="nan_query", self_attn=False, S=6,
     description="one NaN in query: that row's output and weights are NaN")
case("inf_value", special="inf_value", self_attn=False, S=6, layout="batch",
     description="one +Inf in value: batch item 0 output NaN/Inf, weights finite")
case("nan_key", special="nan_key", self_attn=False, S=4, L=3,
     description="one NaN in key: every row of that batch item is NaN")

# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        npdt, _ = _ST_DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype=npdt).reshape(info["shape"])
        if info["dtype"] == "BOOL":
            arr = arr.astype(bool)
        out[name] = (info["dtype"], arr.copy())
    return meta, out

# ---------------------------------------------------------------------------
# the explicit float64 reference (libmha semantics)
# ---------------------------------------------------------------------------


def to_nle(x, layout):
    """Case layout -> (N, L, E)."""
    if layout == "unbatched":
        return x[None]
    if layout == "seq":
        return x.transpose(1, 0, 2)
    return x


def from_nle(y, layout):
    if layout == "unbatched":
        return y[0]
    if layout == "seq":
        return y.transpose(1, 0, 2)
    return y


def reference(cfg, w, query, key, value, kpm, attn_mask):
    """Explicit float64 multi-head attention with libmha's rules.

    cfg: dict with E, H, bias, add_bias_kv, add_zero_attn, layout, is_causal,
    need_weights, average. w: state_dict as float64 numpy arrays (no prefix).
    kpm / attn_mask: numpy arrays (bool or float) in PyTorch shapes, or None.
    Returns (output, weights or None) in PyTorch's shapes, float64."""
    E, H = cfg["E"], cfg["H"]
    d = E // H
    layout = cfg["layout"]
    xq = to_nle(np.asarray(query, np.float64), layout)
    xk = to_nle(np.asarray(key, np.float64), layout)
    xv = to_nle(np.asarray(value, np.float64), layout)
    N, L, _ = xq.shape
    S = xk.shape[1]
    if "in_proj_weight" in w:
        Wq, Wk, Wv = np.split(w["in_proj_weight"], 3, axis=0)
    else:
        Wq, Wk, Wv = w["q_proj_weight"], w["k_proj_weight"], w["v_proj_weight"]
    if cfg["bias"]:
        bq, bk, bv = np.split(w["in_proj_bias"], 3)
    else:
        bq = bk = bv = np.zeros(E)
    with np.errstate(invalid="ignore", over="ignore"):
        Q = xq @ Wq.T + bq
        K = xk @ Wk.T + bk
        V = xv @ Wv.T + bv
    extra = 0
    if cfg["add_bias_kv"]:
        K = np.concatenate([K, np.broadcast_to(w["bias_k"].reshape(1, 1, E), (N, 1, E))], 1)
        V = np.concatenate([V, np.broadcast_to(w["bias_v"].reshape(1, 1, E), (N, 1, E))], 1)
        extra += 1
    if cfg["add_zero_attn"]:
        K = np.concatenate([K, np.zeros((N, 1, E))], 1)
        V = np.concatenate([V, np.zeros((N, 1, E))], 1)
        extra += 1
    Sp = S + extra
    # additive mask (N, H, L, S'); the appended columns are never masked
    M = np.zeros((N, H, L, Sp))
    if attn_mask is not None:
        am = np.asarray(attn_mask)
        am = am.reshape(1, 1, L, S) if am.ndim == 2 else am.reshape(N, H, L, S)
        if am.dtype == bool:
            M[..., :S] = M[..., :S] + np.where(am, -np.inf, 0.0)
        else:
            M[..., :S] = M[..., :S] + am.astype(np.float64)
    if kpm is not None:
        km = np.asarray(kpm).reshape(N, 1, 1, S)
        if km.dtype == bool:
            M[..., :S] = M[..., :S] + np.where(km, -np.inf, 0.0)
        else:
            M[..., :S] = M[..., :S] + km.astype(np.float64)
    if cfg["is_causal"]:
        i = np.arange(L)[:, None]
        j = np.arange(S)[None, :]
        M[..., :S] = M[..., :S] + np.where(j > i, -np.inf, 0.0)
    Qh = Q.reshape(N, L, H, d).transpose(0, 2, 1, 3) / math.sqrt(d)
    Kh = K.reshape(N, Sp, H, d).transpose(0, 2, 1, 3)
    Vh = V.reshape(N, Sp, H, d).transpose(0, 2, 1, 3)
    with np.errstate(invalid="ignore", over="ignore"):
        A = Qh @ Kh.transpose(0, 1, 3, 2) + M
        m = A.max(axis=-1, keepdims=True)
        full = np.isneginf(m)              # every key masked: row -> 0
        ex = np.exp(A - np.where(full, 0.0, m))
        P = ex / ex.sum(axis=-1, keepdims=True)
        P = np.where(full, 0.0, P)
        O = P @ Vh                             # (N, H, L, d)
        O = O.transpose(0, 2, 1, 3).reshape(N, L, E)
        Y = O @ w["out_proj.weight"].T
        if cfg["bias"]:
            Y = Y + w["out_proj.bias"]
    out = from_nle(Y, layout)
    wts = None
    if cfg["need_weights"]:
        wts = P.sum(axis=1) / H if cfg["average"] else P
        if layout == "unbatched":
            wts = wts[0]
    return out, wts

# ---------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------


def combined_mask(cfg, kpm, attn_mask, N, L, S, dtype):
    """One float (N*H, L, S) (or (H, L, S) unbatched) mask with PyTorch >= 2.0
    semantics: bool -> -inf, float added, key_padding_mask and the causal
    mask added. For torch 1.13, which has no is_causal and mishandles a float
    key_padding_mask together with an attn_mask."""
    H = cfg["H"]
    M = torch.zeros(N, H, L, S, dtype=dtype)
    if attn_mask is not None:
        am = torch.as_tensor(attn_mask)
        am = am.reshape(1, 1, L, S) if am.dim() == 2 else am.reshape(N, H, L, S)
        if am.dtype == torch.bool:
            M = M.masked_fill(am, float("-inf"))
        else:
            M = M + am.to(dtype)
    if kpm is not None:
        km = torch.as_tensor(kpm).reshape(N, 1, 1, S)
        if km.dtype == torch.bool:
            M = M.masked_fill(km, float("-inf"))
        else:
            M = M + km.to(dtype)
    if cfg["is_causal"]:
        causal = torch.ones(L, S, dtype=torch.bool).triu(1)
        M = M.masked_fill(causal, float("-inf"))
    if cfg["layout"] == "unbatched":
        return M.reshape(H, L, S)
    return M.reshape(N * H, L, S)


def torch_forward(cfg, mha, query, key, value, kpm, attn_mask, dtype):
    """Runs mha (a float32 or float64 module) on numpy inputs. Grad stays
    enabled and the parameters require grad, which keeps torch off its
    "fast path" (_native_multi_head_attention) whose padded rows differ."""
    q = torch.as_tensor(np.asarray(query), dtype=dtype)
    if cfg["self_attn"]:
        k = v = q
    else:
        k = torch.as_tensor(np.asarray(key), dtype=dtype)
        v = torch.as_tensor(np.asarray(value), dtype=dtype)
    N = 1 if cfg["layout"] == "unbatched" else q.shape[1 if cfg["layout"] == "seq" else 0]
    L = q.shape[0 if cfg["layout"] != "batch" else 1]
    S = k.shape[0 if cfg["layout"] != "batch" else 1]
    kpm_t = am_t = None
    float_kpm = kpm is not None and np.asarray(kpm).dtype != bool
    if cfg["is_causal"] or (float_kpm and attn_mask is not None):
        am_t = combined_mask(cfg, kpm, attn_mask, N, L, S, dtype)
    else:
        if kpm is not None:
            kpm_t = torch.as_tensor(np.asarray(kpm))
            if kpm_t.dtype != torch.bool:
                kpm_t = kpm_t.to(dtype)
        if attn_mask is not None:
            am_t = torch.as_tensor(np.asarray(attn_mask))
            if am_t.dtype != torch.bool:
                am_t = am_t.to(dtype)
    with torch.enable_grad():
        out, wts = mha(q, k, v, key_padding_mask=kpm_t, need_weights=cfg["need_weights"],
                       attn_mask=am_t, average_attn_weights=cfg["average"])
    out = out.detach().double().numpy()
    wts = None if wts is None else wts.detach().double().numpy()
    return out, wts


def state_np(mha):
    return {k: v.detach().double().numpy() for k, v in mha.state_dict().items()}


def build_module(cfg):
    mha = nn.MultiheadAttention(
        cfg["E"], cfg["H"], dropout=0.0, bias=cfg["bias"],
        add_bias_kv=cfg["add_bias_kv"], add_zero_attn=cfg["add_zero_attn"],
        kdim=cfg["kdim"], vdim=cfg["vdim"], batch_first=cfg["layout"] == "batch")
    return mha

# ---------------------------------------------------------------------------
# comparisons
# ---------------------------------------------------------------------------


def max_abs_diff(a, b):
    """Max |a-b| over positions finite in both; None when a non-finite
    position differs (NaN vs number, +inf vs -inf, ...)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb):
        return None
    nf = ~fa
    if not (np.array_equal(np.isnan(a[nf]), np.isnan(b[nf])) and
            np.array_equal(a[nf & ~np.isnan(a)], b[nf & ~np.isnan(b)])):
        return None
    if not fa.any():
        return 0.0
    return float(np.max(np.abs(a[fa] - b[fa])))


def ref_vs_torch(ref, tref, scale):
    """Explicit reference vs torch float64: equal wherever torch is not NaN
    (torch's NaN rows are the fully masked ones in NaN-free inputs)."""
    ok = ~np.isnan(tref)
    if not np.array_equal(np.isnan(ref) & ok, np.zeros_like(ok)):
        return None
    d = max_abs_diff(ref[ok], tref[ok])
    return None if d is None else d / max(1.0, scale)

# ---------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------


def case_seed(seed, name):
    return (seed * 1000003 + zlib.crc32(name.encode())) % (2 ** 31)


def make_masks(cfg, gen, N, L, S):
    """Random masks in PyTorch shapes. One key, `keep`, is left open by every
    mask (key 0 under is_causal, the only key query row 0 may see), so the
    only fully masked rows are those the case asks for."""
    H = cfg["H"]
    kpm = am = None
    keep = 0 if cfg["is_causal"] else int(torch.randint(S, (1,), generator=gen))
    spec = cfg["attn_mask"]
    if spec is not None:
        shape = (L, S) if spec["dims"] == 2 else (N * H, L, S)
        if spec["dtype"] == "bool":
            am = (torch.rand(shape, generator=gen) < 0.3).numpy()
            am[..., keep] = False
        else:
            am = torch.randn(shape, generator=gen).numpy().astype(np.float32)
            inf = (torch.rand(shape, generator=gen) < 0.2).numpy()
            am[inf] = -np.inf
            am[..., keep] = np.where(np.isinf(am[..., keep]), 0.5, am[..., keep])
        for (b, h, i) in spec.get("full_rows", []):
            row = am[i] if am.ndim == 2 else am[b * H + h, i]
            row[...] = True if am.dtype == bool else -np.inf
    spec = cfg["key_padding_mask"]
    if spec is not None:
        if spec["dtype"] == "bool":
            kp = (torch.rand((N, S), generator=gen) < 0.3).numpy()
            kp[:, keep] = False
        else:
            kp = torch.randn((N, S), generator=gen).numpy().astype(np.float32)
            inf = (torch.rand((N, S), generator=gen) < 0.25).numpy()
            kp[inf] = -np.inf
            kp[:, keep] = np.where(np.isinf(kp[:, keep]), -0.25, kp[:, keep])
        for n in spec.get("first_key", []):
            kp[n, 0] = True if kp.dtype == bool else -np.inf
        for n in spec.get("full_batch", []):
            kp[n, :] = True if kp.dtype == bool else -np.inf
        kpm = kp[0] if cfg["layout"] == "unbatched" else kp
    return kpm, am


def shape_of(cfg, n, feat, length):
    if cfg["layout"] == "unbatched":
        return (length, feat)
    if cfg["layout"] == "seq":
        return (length, n, feat)
    return (n, length, feat)


def generate(cfg, seed):
    cs = case_seed(seed, cfg["name"])
    torch.manual_seed(cs)
    mha = build_module(cfg)
    gen = torch.Generator().manual_seed(cs ^ 0x5bd1e995)
    with torch.no_grad():
        if cfg["bias"]:
            mha.in_proj_bias.copy_(0.1 * torch.randn(mha.in_proj_bias.shape, generator=gen))
            mha.out_proj.bias.copy_(0.1 * torch.randn(mha.out_proj.bias.shape, generator=gen))
    mha.eval()
    mha64 = copy.deepcopy(mha).double()
    mha64.eval()

    E, N, L, S = cfg["E"], cfg["N"], cfg["L"], cfg["S"]
    kdim = cfg["kdim"] or E
    vdim = cfg["vdim"] or E
    sc = cfg["scale"]
    query = (sc * torch.randn(shape_of(cfg, N, E, L), generator=gen)).numpy().astype(np.float32)
    if cfg["self_attn"]:
        key = value = query
    else:
        key = (sc * torch.randn(shape_of(cfg, N, kdim, S), generator=gen)).numpy().astype(np.float32)
        value = (sc * torch.randn(shape_of(cfg, N, vdim, S), generator=gen)).numpy().astype(np.float32)
    kpm, am = make_masks(cfg, gen, N, L, S)

    sp = cfg["special"]
    def at(n, l, f):  # index of (batch n, row l, feature f) in the case layout
        if cfg["layout"] == "unbatched":
            return (l, f)
        return (l, n, f) if cfg["layout"] == "seq" else (n, l, f)
    if sp == "nan_query":
        query = query.copy()
        query[at(1, 2, 3)] = np.nan
    elif sp == "inf_value":
        value = value.copy()
        value[at(0, 1, 2)] = np.inf
    elif sp == "nan_key":
        key = key.copy()
        key[at(0, 2, 0)] = np.nan

    out32, w32 = torch_forward(cfg, mha, query, key, value, kpm, am, torch.float32)
    out64, w64 = torch_forward(cfg, mha64, query, key, value, kpm, am, torch.float64)
    w = state_np(mha)
    ref_out, ref_w = reference(cfg, w, query, key, value, kpm, am)

    nonfinite_input = sp is not None
    scale_o = float(np.nanmax(np.abs(np.where(np.isfinite(out64), out64, 0)))) if out64.size else 1.0
    checks = check_case(cfg, out32, w32, out64, w64, ref_out, ref_w, scale_o, nonfinite_input)
    if nonfinite_input:
        exp_out, exp_w = out64, w64      # torch decides NaN/Inf positions
    else:
        exp_out, exp_w = ref_out, ref_w

    # tensors: F32 first (sorted weights, inputs, expected), BOOL last
    tensors = []
    sd = mha.state_dict()
    for k in sorted(sd):
        tensors.append(("mha." + k, "F32", sd[k].detach().numpy()))
    tensors.append(("query", "F32", query))
    tensors.append(("key", "F32", key))
    tensors.append(("value", "F32", value))
    bools = []
    for nm, m in (("key_padding_mask", kpm), ("attn_mask", am)):
        if m is None:
            continue
        if m.dtype == bool:
            bools.append((nm, "BOOL", m))
        else:
            tensors.append((nm, "F32", m))
    tensors.append(("output", "F32", exp_out.astype(np.float32)))
    if cfg["need_weights"]:
        tensors.append(("weights", "F32", exp_w.astype(np.float32)))
    tensors.extend(bools)

    meta = {
        "embed_dim": E, "num_heads": cfg["H"], "bias": int(cfg["bias"]),
        "add_bias_kv": int(cfg["add_bias_kv"]),
        "add_zero_attn": int(cfg["add_zero_attn"]),
        "kdim": kdim, "vdim": vdim,
        "batch_first": int(cfg["layout"] == "batch"),
        "is_causal": int(cfg["is_causal"]),
        "need_weights": int(cfg["need_weights"]),
        "average_attn_weights": int(cfg["average"]),
        "self_attention": int(cfg["self_attn"]),
        "tolerance": "%g" % cfg["tolerance"],
        "seed": seed,
        "torch_version": torch.__version__,
        "description": cfg["description"],
    }
    return tensors, meta, checks


def check_case(cfg, out32, w32, out64, w64, ref_out, ref_w, scale_o, nonfinite_input):
    name = cfg["name"]
    tol = cfg["tolerance"]
    res = {}
    # explicit reference vs torch float64
    d = ref_vs_torch(ref_out, out64, scale_o)
    if d is None or d > REF_TOL:
        raise AssertionError("%s: explicit reference differs from torch f64 output (%s)" % (name, d))
    res["ref_out"] = d
    if cfg["need_weights"]:
        d = ref_vs_torch(ref_w, w64, 1.0)
        if d is None or d > REF_TOL:
            raise AssertionError("%s: explicit reference differs from torch f64 weights (%s)" % (name, d))
        res["ref_w"] = d
    if nonfinite_input:
        # NaN / Inf inputs: the reference must put NaN and Inf where torch does
        for a, b, what in ((ref_out, out64, "output"), (ref_w, w64, "weights")):
            if b is not None and max_abs_diff(a, b) is None:
                raise AssertionError("%s: reference and torch f64 %s differ in NaN/Inf positions"
                                     % (name, what))
    else:
        # torch is NaN only on fully masked rows, and only where the case
        # asks for them; the reference is finite everywhere
        assert np.isfinite(ref_out).all(), name
        ef = cfg.get("expect_full")  # None in --verify: unknown
        if ef is not None and np.isnan(out64).any() != ef:
            raise AssertionError("%s: fully masked rows %s in torch's output" % (
                name, "unexpected" if np.isnan(out64).any() else "missing"))
    # torch float32 vs float64
    d = max_abs_diff(out32, out64)
    if d is None:
        raise AssertionError("%s: torch f32 and f64 differ in NaN/Inf positions" % name)
    res["f32_out"] = d
    if cfg["need_weights"]:
        d = max_abs_diff(w32, w64)
        if d is None:
            raise AssertionError("%s: torch f32 and f64 weights differ in NaN/Inf positions" % name)
        res["f32_w"] = d
    worst = max(res.get("f32_out", 0), res.get("f32_w", 0))
    if worst > tol:
        raise AssertionError("%s: torch f32 differs from f64 by %.3g > tolerance %g" % (name, worst, tol))
    return res


def write_cases_h(path, names):
    lines = ["/* cases.h: generated by tests/gen_fixtures.py; do not edit.",
             " * One X(name) per fixture tests/fixtures/<name>.safetensors. */",
             "#ifndef MHA_FIXTURE_CASES_H",
             "#define MHA_FIXTURE_CASES_H",
             "",
             "#define MHA_FIXTURE_COUNT %d" % len(names),
             "",
             "#define MHA_FIXTURE_CASES(X) \\"]
    for i, n in enumerate(names):
        lines.append("    X(%s)%s" % (n, " \\" if i + 1 < len(names) else ""))
    lines += ["", "#endif /* MHA_FIXTURE_CASES_H */", ""]
    data = "\n".join(lines)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)

# ---------------------------------------------------------------------------
# --verify
# ---------------------------------------------------------------------------


def verify_file(path):
    """Re-reads one fixture, rebuilds the module from its weights and checks
    the stored expected values against the explicit reference and torch."""
    meta, t = read_safetensors(path)
    name = os.path.basename(path)[:-len(".safetensors")]
    E = int(meta["embed_dim"])
    H = int(meta["num_heads"])
    layout = "batch" if meta["batch_first"] == "1" else "seq"
    q = t["query"][1]
    if q.ndim == 2:
        layout = "unbatched"
    cfg = dict(E=E, H=H, bias=meta["bias"] == "1", add_bias_kv=meta["add_bias_kv"] == "1",
               add_zero_attn=meta["add_zero_attn"] == "1", layout=layout,
               is_causal=meta["is_causal"] == "1", need_weights=meta["need_weights"] == "1",
               average=meta["average_attn_weights"] == "1",
               self_attn=meta["self_attention"] == "1", name=name,
               tolerance=float(meta["tolerance"]))
    kdim, vdim = int(meta["kdim"]), int(meta["vdim"])
    mha = nn.MultiheadAttention(E, H, bias=cfg["bias"], add_bias_kv=cfg["add_bias_kv"],
                                add_zero_attn=cfg["add_zero_attn"], kdim=kdim, vdim=vdim,
                                batch_first=layout == "batch")
    sd = {k[4:]: torch.as_tensor(v[1]) for k, v in t.items() if k.startswith("mha.")}
    mha.load_state_dict(sd, strict=True)
    mha.eval()
    mha64 = copy.deepcopy(mha).double()
    kpm = t["key_padding_mask"][1] if "key_padding_mask" in t else None
    am = t["attn_mask"][1] if "attn_mask" in t else None
    key, value = t["key"][1], t["value"][1]
    if cfg["self_attn"]:
        assert np.array_equal(q, key, equal_nan=True) and np.array_equal(q, value, equal_nan=True)
    out32, w32 = torch_forward(cfg, mha, q, key, value, kpm, am, torch.float32)
    out64, w64 = torch_forward(cfg, mha64, q, key, value, kpm, am, torch.float64)
    w = {k: v.detach().double().numpy() for k, v in mha.state_dict().items()}
    ref_out, ref_w = reference(cfg, w, q, key, value, kpm, am)
    nonfinite = not (np.isfinite(q).all() and np.isfinite(key).all() and np.isfinite(value).all())
    scale_o = float(np.max(np.abs(np.where(np.isfinite(out64), out64, 0)))) if out64.size else 1.0
    checks = check_case(cfg, out32, w32, out64, w64, ref_out, ref_w, scale_o, nonfinite)
    # stored vs recomputed: equal up to float32 rounding (another BLAS may
    # round the float64 sums differently in the last bit)
    exp_out = out64 if nonfinite else ref_out
    d = max_abs_diff(t["output"][1], exp_out)
    assert d is not None and d <= 1e-6 * max(1.0, scale_o), \
        "%s: stored output differs from recomputed (%s)" % (name, d)
    assert t["output"][1].shape == exp_out.shape
    if cfg["need_weights"]:
        exp_w = w64 if nonfinite else ref_w
        d = max_abs_diff(t["weights"][1], exp_w)
        assert d is not None and d <= 1e-6, "%s: stored weights differ (%s)" % (name, d)
        assert t["weights"][1].shape == exp_w.shape
    else:
        assert "weights" not in t, name
    return checks


def fmt_checks(c):
    return "ref-vs-torch64 out %.1e%s | torch32-vs-64 out %.2e%s" % (
        c["ref_out"], (" w %.1e" % c["ref_w"]) if "ref_w" in c else "",
        c["f32_out"], (" w %.2e" % c["f32_w"]) if "f32_w" in c else "")


def main():
    ap = argparse.ArgumentParser(
        description="Generate libmha's PyTorch reference fixtures (run with /usr/bin/python3).")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--only", default=None, help="comma-separated case names")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="base seed (default %(default)s)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--verify", metavar="DIR", default=None,
                    help="re-check every fixture in DIR against torch and exit")
    args = ap.parse_args()

    torch.set_num_threads(1)  # deterministic reductions
    if args.list:
        for c in CASES:
            print("%-40s %s" % (c["name"], c["description"]))
        return 0

    if args.verify:
        files = sorted(f for f in os.listdir(args.verify) if f.endswith(".safetensors"))
        bad = 0
        for f in files:
            try:
                c = verify_file(os.path.join(args.verify, f))
                print("ok   %-40s %s" % (f[:-12], fmt_checks(c)))
            except AssertionError as e:
                bad += 1
                print("FAIL %-40s %s" % (f[:-12], e))
        hp = os.path.join(args.verify, "cases.h")
        if os.path.exists(hp):
            with open(hp) as fh:
                listed = [l.strip()[2:].split(")")[0] for l in fh if l.strip().startswith("X(")]
            if sorted(listed) != sorted(f[:-12] for f in files):
                bad += 1
                print("FAIL cases.h does not list exactly the fixture files")
        print("%d fixtures, %d failed" % (len(files), bad))
        return 1 if bad else 0

    cases = CASES
    if args.only:
        want = args.only.split(",")
        names = {c["name"] for c in CASES}
        for w_ in want:
            if w_ not in names:
                sys.exit("unknown case %s (see --list)" % w_)
        cases = [c for c in CASES if c["name"] in want]
    os.makedirs(args.out, exist_ok=True)
    worst = {"f32_out": 0.0, "f32_w": 0.0, "ref_out": 0.0, "ref_w": 0.0}
    total = 0
    for c in cases:
        tensors, meta, checks = generate(c, args.seed)
        path = os.path.join(args.out, c["name"] + ".safetensors")
        write_safetensors(path, tensors, meta)
        size = os.path.getsize(path)
        total += size
        if c["special"] is None and c["scale"] == 1.0:
            for k in worst:
                worst[k] = max(worst[k], checks.get(k, 0.0))
        print("%-40s %7d B  %s" % (c["name"], size, fmt_checks(checks)))
    # cases.h lists every case file present in the folder
    present = sorted(f[:-12] for f in os.listdir(args.out) if f.endswith(".safetensors"))
    order = [c["name"] for c in CASES if c["name"] in present]
    order += [n for n in present if n not in order]
    write_cases_h(os.path.join(args.out, "cases.h"), order)
    print("%d cases written, %d bytes; unit-scale worst: torch32-vs-64 out %.2e w %.2e, "
          "ref-vs-torch64 out %.1e w %.1e" % (len(cases), total, worst["f32_out"],
                                              worst["f32_w"], worst["ref_out"], worst["ref_w"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
