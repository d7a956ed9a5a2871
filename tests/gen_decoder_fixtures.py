#!/usr/bin/env python3
# gen_decoder_fixtures.py: writes the PyTorch reference fixtures of the
# decoder attention layer (tests/fixtures/decoder/*.safetensors) that
# tests/test_decoder.c compares mha_decoder_forward against.
#
#     /usr/bin/python3 tests/gen_decoder_fixtures.py                # regenerate
#     /usr/bin/python3 tests/gen_decoder_fixtures.py --seed 7 --out /tmp/fx
#
# Debian's torch 1.13 has no scaled_dot_product_attention, so the attention
# is written out here in float64, as Hugging Face's LlamaAttention computes
# it: rotate_half (NeoX) or interleaved (GPT-J) rotary embedding on the first
# rope_dims features with inv_freq = theta^(-2i/r) and positions divided by
# the linear scaling factor, repeat_interleave of the kv heads (GQA), causal
# attention aligned to the last key with an optional sliding window, logit
# softcap, ALiBi and sink logits that join the softmax's denominator.
# Each file holds the layer's weights under a HF key prefix, the input x,
# the positions (I64, not contiguous) and the expected output y (F64);
# its metadata the layer's config.

import os

import numpy as np

from fixture_gen import need_torch, parse_args, write_safetensors

torch = need_torch("gen_decoder_fixtures.py")

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "model.layers.3.self_attn."

# name: config (rope: 0 none, 1 neox, 2 gptj; as mha_rope_style)
CASES = {
    "decoder_llama_gqa": dict(E=32, Hq=4, Hkv=2, d=8, rope=1, rope_dims=8,
                              theta=500000.0, scaling=1.0, B=2, T=7),
    "decoder_qwen2_bias_partial": dict(E=24, Hq=6, Hkv=2, d=8, rope=1,
                                       rope_dims=4, theta=1000000.0,
                                       scaling=4.0, qkv_bias=1, B=1, T=9),
    "decoder_gptj_mqa": dict(E=16, Hq=4, Hkv=1, d=16, rope=2, rope_dims=8,
                             theta=10000.0, scaling=1.0, o_bias=1, B=2, T=5),
    "decoder_gemma_window_softcap": dict(E=32, Hq=4, Hkv=2, d=16, rope=1,
                                         rope_dims=16, theta=10000.0,
                                         scaling=1.0, window=3, softcap=2.0,
                                         B=1, T=8),
    "decoder_sinks_alibi": dict(E=20, Hq=5, Hkv=5, d=4, rope=0, rope_dims=4,
                                theta=10000.0, scaling=1.0, alibi=1, sinks=1,
                                B=2, T=6),
}
DEFAULTS = dict(window=0, softcap=0.0, alibi=0, sinks=0, qkv_bias=0,
                o_bias=0)


def rotary(x, pos, c):
    """x [B, H, T, d] float64, pos [B, T]: the first rope_dims features
    rotated."""
    r = c["rope_dims"]
    inv_freq = 1.0 / (c["theta"] ** (torch.arange(0, r, 2, dtype=torch.float64) / r))
    freqs = (pos.to(torch.float64) / c["scaling"])[..., None] * inv_freq  # [B,T,r/2]
    rot, rest = x[..., :r], x[..., r:]
    if c["rope"] == 1:  # NeoX: rotate_half
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        x1, x2 = rot[..., : r // 2], rot[..., r // 2:]
        rotated = torch.cat((-x2, x1), dim=-1)
    else:  # GPT-J: rotate_every_two
        emb = torch.repeat_interleave(freqs, 2, dim=-1)[:, None]
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return torch.cat((rot * emb.cos() + rotated * emb.sin(), rest), dim=-1)


def alibi_slopes(H):
    n = 2 ** int(np.floor(np.log2(H)))
    s = [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    s += [2.0 ** (-4.0 * (2 * k + 1) / n) for k in range(H - n)]
    return torch.tensor(s, dtype=torch.float64)


def reference(c, w, x, pos, gates=None):
    """gates: None, or head_gates [Hq] or [B, Hq], each head's attention
    output times its gate before o_proj."""
    B, T, E = x.shape
    Hq, Hkv, d = c["Hq"], c["Hkv"], c["d"]

    def proj(name, n_heads):
        y = x @ w[name + ".weight"].T
        if c["qkv_bias"]:
            y = y + w[name + ".bias"]
        return y.view(B, T, n_heads, d).transpose(1, 2)

    q, k, v = proj("q_proj", Hq), proj("k_proj", Hkv), proj("v_proj", Hkv)
    if c["rope"]:
        q, k = rotary(q, pos, c), rotary(k, pos, c)
    k = torch.repeat_interleave(k, Hq // Hkv, dim=1)
    v = torch.repeat_interleave(v, Hq // Hkv, dim=1)
    s = (q @ k.transpose(-1, -2)) / np.sqrt(d)
    if c["softcap"]:
        s = c["softcap"] * torch.tanh(s / c["softcap"])
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    if c["alibi"]:
        s = s + alibi_slopes(Hq)[:, None, None] * (j - i).to(torch.float64)
    masked = j > i
    if c["window"]:
        masked = masked | (j <= i - c["window"])
    s = s.masked_fill(masked, float("-inf"))
    if c["sinks"]:
        sink = w["sinks"].view(1, Hq, 1, 1).expand(B, Hq, T, 1)
        p = torch.softmax(torch.cat((s, sink), dim=-1), dim=-1)[..., :-1]
    else:
        p = torch.softmax(s, dim=-1)
    o = p @ v
    if gates is not None:
        o = o * gates.reshape(-1, Hq, 1, 1)
    o = o.transpose(1, 2).reshape(B, T, Hq * d)
    y = o @ w["o_proj.weight"].T
    if c["o_bias"]:
        y = y + w["o_proj.bias"]
    return y


def weights(c, gen):
    E, q, kv = c["E"], c["Hq"] * c["d"], c["Hkv"] * c["d"]
    shapes = {"q_proj.weight": (q, E), "k_proj.weight": (kv, E),
              "v_proj.weight": (kv, E), "o_proj.weight": (E, q)}
    if c["qkv_bias"]:
        shapes.update({"q_proj.bias": (q,), "k_proj.bias": (kv,),
                       "v_proj.bias": (kv,)})
    if c["o_bias"]:
        shapes["o_proj.bias"] = (E,)
    if c["sinks"]:
        shapes["sinks"] = (c["Hq"],)
    w = {}
    for name, shape in shapes.items():
        scale = 1.0 / np.sqrt(shape[-1]) if len(shape) == 2 else 0.5
        t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        w[name] = t.to(torch.float32).to(torch.float64)  # what F32 stores
    return w


def generate(name, c, seed, out):
    c = dict(DEFAULTS, **c)
    gen = torch.Generator().manual_seed(seed + sum(map(ord, name)))
    w = weights(c, gen)
    B, T, E = c["B"], c["T"], c["E"]
    x = torch.randn((B, T, E), generator=gen, dtype=torch.float64)
    x = x.to(torch.float32).to(torch.float64)
    # positions with gaps, not from 0 (the causal mask still follows the
    # cache order: RoPE sees only these)
    pos = torch.arange(T)[None, :] * 2 + 5 + 3 * torch.arange(B)[:, None]
    y = reference(c, w, x, pos)
    tensors = [(PREFIX + k, "F32", v.numpy()) for k, v in w.items()]
    tensors += [("x", "F32", x.numpy()), ("positions", "I64", pos.numpy()),
                ("y", "F64", y.numpy())]
    meta = {k: c[k] for k in sorted(c)}
    meta["prefix"] = PREFIX
    write_safetensors(os.path.join(out, name + ".safetensors"), tensors, meta)


def main():
    a = parse_args(__doc__, os.path.join(HERE, "fixtures", "decoder"), 1234)
    for name, c in CASES.items():
        generate(name, c, a.seed, a.out)


if __name__ == "__main__":
    main()
