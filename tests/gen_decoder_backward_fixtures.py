#!/usr/bin/env python3
# gen_decoder_backward_fixtures.py: writes the float64 autograd fixtures of
# the decoder layer's backward (tests/fixtures/decoder_backward/
# *.safetensors) that tests/test_decoder_backward.c compares
# mha_decoder_backward against.
#
#     /usr/bin/python3 tests/gen_decoder_backward_fixtures.py      # regenerate
#     /usr/bin/python3 tests/gen_decoder_backward_fixtures.py --seed 7 --out /tmp/fx
#
# The forward is gen_decoder_fixtures.py's reference (rotate_half or
# interleaved RoPE, repeat_interleave for GQA, causal over a prefill from
# an empty cache, window, softcap, ALiBi, sinks), run with requires_grad on x and the weights; a random
# upstream gradient dy is backpropagated by torch.autograd. Each file holds
# the weights under the HF prefix, x, positions, dy, y, dx and grad.<name>
# per weight (F64), and with head gates head_gates and grad.head_gates;
# its metadata the config (default_pos: the forward uses the default
# positions 0 .. T-1).

import os

from fixture_gen import parse_args, write_safetensors
from gen_decoder_fixtures import DEFAULTS, PREFIX, reference, torch, weights

HERE = os.path.dirname(os.path.abspath(__file__))

CASES = {
    # Llama-like: GQA, NeoX RoPE over all of d, theta 500000
    "llama_gqa_neox": dict(E=32, Hq=4, Hkv=2, d=8, rope=1, rope_dims=8,
                           theta=500000.0, scaling=1.0, B=2, T=7),
    # MQA, GPT-J interleaved partial rotary, head_dim != E / Hq, o_proj bias
    "mqa_gptj_partial": dict(E=16, Hq=4, Hkv=1, d=12, rope=2, rope_dims=8,
                             theta=10000.0, scaling=1.0, o_bias=1, B=2, T=5),
    # Qwen2: q/k/v biases, partial NeoX, theta 1e6, linear scaling 4
    "qwen2_bias": dict(E=24, Hq=6, Hkv=2, d=8, rope=1, rope_dims=4,
                       theta=1000000.0, scaling=4.0, qkv_bias=1, o_bias=1,
                       B=1, T=9),
    # plain multi-head (Hkv = Hq), no rotation, default positions
    "mha_norope": dict(E=12, Hq=3, Hkv=3, d=5, rope=0, rope_dims=0,
                       theta=10000.0, scaling=1.0, B=2, T=6, default_pos=1),
    # gpt-oss: sink logits (their gradient too), GQA, biases
    "sinks_gqa": dict(E=16, Hq=4, Hkv=2, d=8, rope=1, rope_dims=8,
                      theta=150000.0, scaling=1.0, sinks=1, qkv_bias=1,
                      o_bias=1, B=2, T=6),
    # one token per sequence, GQA with NeoX, default positions
    "gqa_t1": dict(E=16, Hq=4, Hkv=2, d=4, rope=1, rope_dims=4,
                   theta=10000.0, scaling=1.0, B=3, T=1, default_pos=1),
    # Mistral: sliding window 3 (shorter than T), GQA, NeoX, theta 1e6
    "mistral_window": dict(E=32, Hq=4, Hkv=2, d=8, rope=1, rope_dims=8,
                           theta=1000000.0, scaling=1.0, window=3, B=2,
                           T=9),
    # ALiBi (BLOOM/MPT): no rotation, 5 heads (interpolated slopes)
    "alibi_mha": dict(E=20, Hq=5, Hkv=5, d=4, rope=0, rope_dims=0,
                      theta=10000.0, scaling=1.0, alibi=1, o_bias=1, B=2,
                      T=6, default_pos=1),
    # Gemma-2: logit softcap (small, so tanh bends the scores), GQA
    "gemma2_softcap": dict(E=32, Hq=4, Hkv=2, d=16, rope=1, rope_dims=16,
                           theta=10000.0, scaling=1.0, softcap=0.5, B=1,
                           T=8),
    # all at once: window, softcap, ALiBi, sinks, GPT-J RoPE, biases
    "window_softcap_alibi_sinks": dict(E=16, Hq=4, Hkv=2, d=8, rope=2,
                                       rope_dims=8, theta=10000.0,
                                       scaling=1.0, window=3, softcap=1.0,
                                       alibi=1, sinks=1, qkv_bias=1,
                                       o_bias=1, B=2, T=7),
    # head gates [Hq]: kv group 0 gated off (an inference forward skips
    # it, a training one computes it: a zero gate has a gradient too)
    "gates_heads": dict(E=16, Hq=4, Hkv=2, d=4, rope=1, rope_dims=4,
                        theta=10000.0, scaling=1.0, o_bias=1, B=2, T=5,
                        gates=[0.0, 0.0, 0.7, 1.3]),
    # head gates [B, Hq], one per sequence, GQA with sinks
    "gates_per_sequence": dict(E=16, Hq=4, Hkv=2, d=4, rope=1, rope_dims=4,
                               theta=10000.0, scaling=1.0, sinks=1,
                               qkv_bias=1, B=2, T=4,
                               gates=[[0.5, 1.0, 0.0, 1.5],
                                      [1.2, 0.3, 0.9, 0.0]]),
}


def generate(name, c, seed, out):
    c = {**DEFAULTS, "default_pos": 0, **c}
    gen = torch.Generator().manual_seed(seed + sum(map(ord, name)))
    w = weights(c, gen)
    B, T, E = c["B"], c["T"], c["E"]
    x = torch.randn((B, T, E), generator=gen, dtype=torch.float64)
    x = x.to(torch.float32).to(torch.float64)
    dy = torch.randn((B, T, E), generator=gen, dtype=torch.float64)
    dy = dy.to(torch.float32).to(torch.float64)
    if c["default_pos"]:
        pos = torch.arange(T)[None, :].expand(B, T)
    else:  # gaps, not from 0: RoPE sees them, the causal mask does not
        pos = torch.arange(T)[None, :] * 3 + 2 + 5 * torch.arange(B)[:, None]
    gates = c.pop("gates", None)
    if gates is not None:
        gates = torch.tensor(gates, dtype=torch.float64, requires_grad=True)
    x.requires_grad_(True)
    for t in w.values():
        t.requires_grad_(True)
    y = reference(c, w, x, pos, gates)
    y.backward(dy)
    tensors = [(PREFIX + k, "F32", v.detach().numpy()) for k, v in w.items()]
    tensors += [("x", "F32", x.detach().numpy()),
                ("positions", "I64", pos.contiguous().numpy()),
                ("dy", "F32", dy.numpy()), ("y", "F64", y.detach().numpy()),
                ("dx", "F64", x.grad.numpy())]
    tensors += [("grad." + k, "F64", v.grad.numpy()) for k, v in w.items()]
    if gates is not None:
        tensors += [("head_gates", "F32", gates.detach().numpy()),
                    ("grad.head_gates", "F64", gates.grad.numpy())]
    meta = {k: c[k] for k in sorted(c)}
    write_safetensors(os.path.join(out, name + ".safetensors"), tensors, meta)


def main():
    a = parse_args(__doc__, os.path.join(HERE, "fixtures", "decoder_backward"),
                   1234)
    os.makedirs(a.out, exist_ok=True)
    for name, c in CASES.items():
        generate(name, c, a.seed, a.out)


if __name__ == "__main__":
    main()
