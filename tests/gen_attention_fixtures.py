#!/usr/bin/env python3
# gen_attention_fixtures.py: writes the PyTorch float64 reference fixtures
# (tests/fixtures/attention/*.safetensors) that tests/test_attention.c runs
# mha_attention against. Debian's torch 1.13 has no scaled_dot_product_
# attention, so the math is written out: repeat_interleave for GQA, then in
# mha.h's order s = softcap(scale q.k) + alibi + bias, the masks (kv_lens,
# causal top-left or bottom-right, window), and a softmax whose denominator
# also holds exp(sink); a row with no key left is 0.
#
#     /usr/bin/python3 tests/gen_attention_fixtures.py            # regenerate
#     /usr/bin/python3 tests/gen_attention_fixtures.py --seed 7 --out DIR
#
# Each file holds q [B,L,Hq,d], k and v [B,S,Hkv,d] (f32; keys past a
# sequence's kv_lens are NaN, so reading one fails the test), the optional
# sinks [Hq], bias and kv_lens [B] (I64), and out [B,L,Hq,d] (F64); the
# options are metadata. ALiBi uses Hugging Face's get_alibi_slopes, written
# here independently of the library's.

import math
import os

import numpy as np

from fixture_gen import need_torch, parse_args, write_safetensors

torch = need_torch("gen_attention_fixtures.py")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures", "attention")
DEFAULT_SEED = 1414

# name: B, L, S, Hq, Hkv, d, options. causal: 0 none, 1 top-left,
# 2 bottom-right. bias: the shape of an additive bias (with some -inf).
CASES = {
    "mha_plain": (2, 5, 7, 4, 4, 16, {}),
    "gqa_alibi_bottom_right": (2, 3, 9, 6, 2, 8,
                               {"causal": 2, "alibi": 1}),
    "window_softcap": (1, 12, 12, 4, 4, 32,
                       {"causal": 1, "window": 4, "softcap": 1.5,
                        "qscale": 3.0}),
    "mqa_sinks_kv_lens": (3, 2, 20, 4, 1, 16,
                          {"causal": 2, "sinks": 1, "kv_lens": [20, 11, 1]}),
    "bias_2d": (2, 4, 6, 2, 2, 8, {"bias": (4, 6)}),
    "bias_per_key": (2, 4, 6, 4, 2, 8, {"bias": (2, 1, 1, 6), "scale": 0.3}),
    "decode_long": (2, 1, 520, 4, 1, 32,
                    {"causal": 2, "kv_lens": [515, 520]}),
    "head80_cross": (1, 3, 5, 2, 1, 80, {}),
    "head256": (1, 2, 4, 2, 2, 256, {"causal": 1}),
    "everything": (3, 4, 24, 4, 2, 16,
                   {"causal": 2, "window": 5, "softcap": 2.0, "alibi": 1,
                    "sinks": 1, "kv_lens": [24, 13, 6], "bias": (4, 24)}),
}


def alibi_slopes(n):
    """Hugging Face's get_alibi_slopes (Press et al.)."""
    def pow2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return pow2(n)
    c = 2 ** math.floor(math.log2(n))
    return pow2(c) + alibi_slopes(2 * c)[0::2][:n - c]


def reference(q, k, v, scale, o):
    """q [B,L,Hq,d], k and v [B,S,Hkv,d] float64 -> out [B,L,Hq,d]."""
    B, L, Hq, d = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    qh = q.permute(0, 2, 1, 3)
    kh = k.permute(0, 2, 1, 3).repeat_interleave(Hq // Hkv, dim=1)
    vh = v.permute(0, 2, 1, 3).repeat_interleave(Hq // Hkv, dim=1)
    s = scale * qh @ kh.transpose(-1, -2)                   # [B,Hq,L,S]
    if o.get("softcap"):
        s = o["softcap"] * torch.tanh(s / o["softcap"])
    lens = o.get("kv_lens", [S] * B)
    i = torch.arange(L, dtype=torch.float64)[:, None]
    j = torch.arange(S, dtype=torch.float64)[None, :]
    slopes = torch.tensor(alibi_slopes(Hq), dtype=torch.float64)
    bias = o.get("bias_t")
    for b in range(B):
        p = i + (lens[b] - L if o.get("causal") == 2 else 0)
        if o.get("alibi"):
            s[b] += slopes[:, None, None] * (j - p)[None]
        if bias is not None:
            s[b] += bias.expand(B, Hq, L, S)[b]
        masked = (j >= lens[b]).expand(L, S)
        if o.get("causal"):
            masked = masked | (j > p)
        if o.get("window"):
            masked = masked | (j <= p - o["window"])
        s[b][:, masked] = -math.inf
    m = s.max(dim=-1, keepdim=True).values
    sink = o.get("sinks_t")
    sink = (sink.view(1, Hq, 1, 1) if sink is not None
            else torch.full((1, Hq, 1, 1), -math.inf, dtype=torch.float64))
    m2 = torch.maximum(m, sink)
    e = torch.exp(s - m2)
    den = e.sum(dim=-1, keepdim=True) + torch.exp(sink - m2)
    out = (e / den) @ vh
    out[(m == -math.inf).expand_as(out)] = 0.0
    return out.permute(0, 2, 1, 3)


def make_case(name, spec, rng):
    B, L, S, Hq, Hkv, d, o = spec
    o = dict(o)
    q = torch.tensor(rng.standard_normal((B, L, Hq, d)) * o.get("qscale", 1.0))
    k = torch.tensor(rng.standard_normal((B, S, Hkv, d)))
    v = torch.tensor(rng.standard_normal((B, S, Hkv, d)))
    q, k, v = (t.float().double() for t in (q, k, v))  # what f32 holds
    tensors = []
    if o.get("sinks"):
        o["sinks_t"] = torch.tensor(rng.standard_normal(Hq)).float().double()
        tensors.append(("sinks", "F32", o["sinks_t"].numpy()))
    if "bias" in o:
        bias = rng.standard_normal(o["bias"]) * 0.5
        bias[rng.random(o["bias"]) < 0.2] = -np.inf
        o["bias_t"] = torch.tensor(bias).float().double()
        tensors.append(("bias", "F32", o["bias_t"].numpy()))
    if "kv_lens" in o:
        tensors.append(("kv_lens", "I64", np.array(o["kv_lens"])))
    scale = o.get("scale", 1.0 / math.sqrt(d))
    out = reference(q, k, v, scale, o)
    kn, vn = k.numpy().copy(), v.numpy().copy()
    for b, n in enumerate(o.get("kv_lens", [])):
        kn[b, n:] = np.nan  # never read
        vn[b, n:] = np.nan
    meta = {"causal": o.get("causal", 0), "window": o.get("window", 0),
            "softcap": o.get("softcap", 0.0), "alibi": o.get("alibi", 0),
            "scale": o.get("scale", 0.0)}
    tensors = [("q", "F32", q.numpy()), ("k", "F32", kn), ("v", "F32", vn),
               ("out", "F64", out.numpy())] + tensors
    return tensors, meta


def main():
    args = parse_args(__doc__, DEFAULT_OUT, DEFAULT_SEED)
    rng = np.random.default_rng(args.seed)
    for name, spec in CASES.items():
        tensors, meta = make_case(name, spec, rng)
        write_safetensors(os.path.join(args.out, name + ".safetensors"),
                          tensors, meta)
    print("wrote %d fixtures to %s" % (len(CASES), args.out))


if __name__ == "__main__":
    main()
