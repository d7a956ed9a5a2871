#!/usr/bin/env python3
# gen_heads_fixtures.py: writes the PyTorch float64 reference fixtures
# (tests/fixtures/heads/*.safetensors) that tests/test_heads.c runs gated
# and pruned nn.MultiheadAttention forwards against. A head gate g_h
# multiplies head h's attention output before out_proj (Michel et al.
# 2019): Y = sum_h g_h O_h Wo_h^T + bo; PyTorch has no such argument, so
# the forward is written out in float64 and checked against
# torch.nn.MultiheadAttention with every gate 1.
#
#     /usr/bin/python3 tests/gen_heads_fixtures.py            # regenerate
#     /usr/bin/python3 tests/gen_heads_fixtures.py --seed 7 --out DIR
#
# Each file holds the module's state_dict (F32), query/key/value (F32, in
# the layer's layout), key_padding_mask (F32 additive, optional), gates
# (F32 [H] or [B, H]), and out (F64, like query), head_outputs (F64
# [B, H, L, d]: O_h before its gate) and weights (F64 [B, H, L, S'], rows of
# a skipped head 0). Metadata: the layer config, "batched", and "prune"
# (heads to prune, comma-separated, whose gates are 0: a pruned layer must
# give out with the other gates).

import math
import os

import numpy as np

from fixture_gen import need_torch, parse_args, write_safetensors

torch = need_torch("gen_heads_fixtures.py")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures", "heads")
DEFAULT_SEED = 1515

# name: B (0: unbatched), L, S, E, H, options. gates: a list ([H]) or a
# list of lists ([B, H]); prune: heads pruned (their gates 0, others 1
# unless gates says otherwise).
CASES = {
    "gates_self": (2, 5, 5, 16, 4,
                   {"gates": [1.0, 0.0, 0.5, -1.25]}),
    "gates_batch_cross": (3, 4, 6, 24, 6,
                          {"kdim": 10, "vdim": 7, "batch_first": 1,
                           "add_bias_kv": 1, "add_zero_attn": 1, "kpm": 1,
                           "gates": [[0.3, 1.0, 0.0, 2.0, 0.0, 1.0],
                                     [1.0, -0.5, 0.0, 1.0, 1.5, 0.0],
                                     [0.0, 1.0, 0.0, 0.25, 1.0, 0.7]]}),
    "gates_unbatched_no_bias": (0, 3, 4, 8, 2,
                                {"bias": 0, "gates": [0.0, 2.0]}),
    "prune_self": (2, 6, 6, 32, 8, {"prune": [1, 3, 4, 6], "causal": 1}),
    "prune_cross_bias_kv": (2, 3, 5, 24, 4,
                            {"kdim": 12, "vdim": 20, "add_bias_kv": 1,
                             "batch_first": 1, "prune": [0, 2],
                             "gates": [0.0, 0.5, 0.0, -2.0]}),
}


def make_module(E, H, o, rng):
    m = torch.nn.MultiheadAttention(
        E, H, bias=bool(o.get("bias", 1)),
        add_bias_kv=bool(o.get("add_bias_kv", 0)),
        add_zero_attn=bool(o.get("add_zero_attn", 0)),
        kdim=o.get("kdim"), vdim=o.get("vdim"),
        batch_first=bool(o.get("batch_first", 0))).double().eval()
    with torch.no_grad():
        for p in m.parameters():  # values f32 holds exactly
            p.copy_(torch.tensor(rng.standard_normal(p.shape) * 0.3)
                    .float().double())
    return m


def forward(m, q, k, v, kpm, causal, gates):
    """Batch-first float64 inputs [B,T,F] -> out [B,L,E], head outputs
    [B,H,L,d], weights [B,H,L,S']."""
    E, H = m.embed_dim, m.num_heads
    d = E // H
    if m._qkv_same_embed_dim:
        wq, wk, wv = m.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    bq, bk, bv = (m.in_proj_bias.chunk(3) if m.in_proj_bias is not None
                  else (None, None, None))
    lin = torch.nn.functional.linear
    Q, K, V = lin(q, wq, bq), lin(k, wk, bk), lin(v, wv, bv)
    B, L, S = q.shape[0], q.shape[1], k.shape[1]
    extra = 0
    if m.bias_k is not None:
        K = torch.cat([K, m.bias_k.view(1, 1, E).expand(B, 1, E)], 1)
        V = torch.cat([V, m.bias_v.view(1, 1, E).expand(B, 1, E)], 1)
        extra += 1
    if m.add_zero_attn:
        K = torch.cat([K, torch.zeros(B, 1, E, dtype=K.dtype)], 1)
        V = torch.cat([V, torch.zeros(B, 1, E, dtype=V.dtype)], 1)
        extra += 1
    S2 = S + extra
    qh = Q.view(B, L, H, d).transpose(1, 2)
    kh = K.view(B, S2, H, d).transpose(1, 2)
    vh = V.view(B, S2, H, d).transpose(1, 2)
    a = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    add = torch.zeros(B, 1, L, S2, dtype=a.dtype)
    if kpm is not None:
        add[:, 0, :, :S] += kpm[:, None, :]
    if causal:
        i = torch.arange(L)[:, None]
        j = torch.arange(S2)[None, :]
        add[:, 0][:, (j > i) & (j < S)] = -math.inf
    p = torch.softmax(a + add, dim=-1)
    heads = p @ vh                                   # [B,H,L,d]
    g = gates.view(-1, H, 1, 1).expand(B, H, 1, 1)
    skipped = (gates.view(-1, H) == 0).all(0)
    p = p.clone()
    p[:, skipped] = 0.0
    heads = heads.clone()
    heads[:, skipped] = 0.0
    o = (heads * g).transpose(1, 2).reshape(B, L, E)
    return m.out_proj(o), heads, p


def make_case(name, spec, rng):
    B, L, S, E, H, o = spec
    batched = B > 0
    B = max(B, 1)
    m = make_module(E, H, o, rng)
    kd, vd = o.get("kdim", E), o.get("vdim", E)
    q = torch.tensor(rng.standard_normal((B, L, E))).float().double()
    k = torch.tensor(rng.standard_normal((B, S, kd))).float().double()
    v = torch.tensor(rng.standard_normal((B, S, vd))).float().double()
    kpm = None
    if o.get("kpm"):
        kpm = torch.zeros(B, S, dtype=torch.float64)
        kpm[:, -1] = -math.inf
        kpm[0, 1] = -0.5
    gates = torch.tensor(o.get("gates", [1.0] * H), dtype=torch.float64)
    for h in o.get("prune", []):
        gates.view(-1, H)[:, h] = 0.0
    causal = o.get("causal", 0)
    with torch.no_grad():
        out, heads, w = forward(m, q, k, v, kpm, causal,
                                torch.ones(H, dtype=torch.float64))
        mask = None
        if causal:
            mask = torch.triu(torch.full((L, S), -math.inf,
                                         dtype=torch.float64), 1)
        want, want_w = m(q, k, v, key_padding_mask=kpm, attn_mask=mask,
                         average_attn_weights=False) \
            if m.batch_first else \
            (lambda r: (r[0].transpose(0, 1), r[1]))(
                m(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                  key_padding_mask=kpm, attn_mask=mask,
                  average_attn_weights=False))
        assert torch.allclose(out, want, atol=1e-12), name
        assert torch.allclose(w, want_w, atol=1e-12), name
        out, heads, w = forward(m, q, k, v, kpm, causal, gates)
    def layout(t):  # batch-first [B,T,F] -> the layer's layout
        if not batched:
            return t[0]
        return t if m.batch_first else t.transpose(0, 1)

    def squeeze(t):  # per batch item arrays lose B when unbatched
        return t if batched else t[0]

    tensors = [(n, "F32", t.detach().numpy())
               for n, t in m.state_dict().items()]
    for n, t in (("query", q), ("key", k), ("value", v)):
        tensors.append((n, "F32", layout(t).numpy()))
    if kpm is not None:
        tensors.append(("key_padding_mask", "F32", squeeze(kpm).numpy()))
    tensors += [("gates", "F32", gates.numpy()),
                ("out", "F64", layout(out).numpy()),
                ("head_outputs", "F64", squeeze(heads).numpy()),
                ("weights", "F64", squeeze(w).numpy())]
    meta = {"embed_dim": E, "num_heads": H, "kdim": kd, "vdim": vd,
            "bias": o.get("bias", 1), "add_bias_kv": o.get("add_bias_kv", 0),
            "add_zero_attn": o.get("add_zero_attn", 0),
            "batch_first": o.get("batch_first", 0), "batched": int(batched),
            "causal": causal,
            "prune": ",".join(str(h) for h in o.get("prune", []))}
    return tensors, meta


def main():
    args = parse_args(__doc__, DEFAULT_OUT, DEFAULT_SEED)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    for name, spec in CASES.items():
        tensors, meta = make_case(name, spec, rng)
        write_safetensors(os.path.join(args.out, name + ".safetensors"),
                          tensors, meta)
    print("wrote %d fixtures to %s" % (len(CASES), args.out))


if __name__ == "__main__":
    main()
