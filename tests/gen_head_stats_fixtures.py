#!/usr/bin/env python3
# gen_head_stats_fixtures.py: writes the PyTorch float64 reference fixtures
# (tests/fixtures/head_stats/*.safetensors) that tests/test_head_stats.c
# runs mha_head_stats against. Each file holds an nn.MultiheadAttention's
# state_dict under "layer.", the inputs (query, key = value, grad: dL/dY)
# and the expected statistics, computed here from the module's own
# per-head weights (need_weights, average_attn_weights=False):
#   entropy, confidence, distance, first_key, prev_token [H]: row means
#   ablation [H]: mean over items of ||Y - Y(g_h = 0)|| / ||Y||
#   gradient_raw [H]: mean over items of |dL/dg_bh|, by torch autograd of
#       head gates g [N,H] (Y = sum_h g_bh O_h W_o,h^T + b_o, L = <dL/dY, Y>)
#   gradient [H]: gradient_raw / its l2 norm
#   js [H,H], cosine [H,H]: the redundancy matrices
#
#     /usr/bin/python3 tests/gen_head_stats_fixtures.py       # regenerate

import os

import numpy as np

from fixture_gen import need_torch, parse_args, write_safetensors

torch = need_torch("gen_head_stats_fixtures.py")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures", "head_stats")
DEFAULT_SEED = 1515

# name: E, H, N, L, S, options (batch_first, causal, add_zero_attn)
CASES = {
    "self_seqmajor": (16, 4, 2, 6, 6, {}),
    "cross_batch_first_causal": (24, 3, 3, 5, 7,
                                 {"batch_first": 1, "causal": 1}),
    "zero_attn": (8, 2, 1, 4, 4, {"add_zero_attn": 1}),
}


def head_outputs(m, q, k, gates, causal):
    """Y of the module with gates [N,H] on the heads, by hand, and the
    per-head weights [N,H,L,S']; q, k (N, T, E) batch-first float64."""
    E, H = m.embed_dim, m.num_heads
    d = E // H
    w, b = m.in_proj_weight, m.in_proj_bias
    Q = q @ w[:E].T + b[:E]
    K = k @ w[E:2 * E].T + b[E:2 * E]
    V = k @ w[2 * E:].T + b[2 * E:]
    N, L, S = q.shape[0], q.shape[1], k.shape[1]
    if m.add_zero_attn:
        K = torch.cat([K, K.new_zeros(N, 1, E)], 1)
        V = torch.cat([V, V.new_zeros(N, 1, E)], 1)
    Q = Q.view(N, L, H, d).transpose(1, 2)
    K = K.view(N, -1, H, d).transpose(1, 2)
    V = V.view(N, -1, H, d).transpose(1, 2)
    A = Q @ K.transpose(-1, -2) / d ** 0.5
    if causal:
        cols = torch.arange(A.shape[-1])
        mask = (cols[None, :] > torch.arange(L)[:, None]) & (cols[None, :] < S)
        A = A.masked_fill(mask, float("-inf"))
    P = torch.softmax(A, -1)
    O = P @ V                                       # [N,H,L,d]
    Wo = m.out_proj.weight.view(E, H, d)            # [E,H,d]
    Z = torch.einsum("nhld,ehd->nhle", O, Wo)       # projected per head
    Y = (gates[:, :, None, None] * Z).sum(1) + m.out_proj.bias
    return Y, P, Z


def row_stats(P):
    """entropy, confidence, distance, first_key, prev_token [H]."""
    N, H, L, S = P.shape
    ent = -(torch.where(P > 0, P * torch.log(P), P.new_zeros(()))).sum(-1)
    i = torch.arange(L)[:, None].double()
    j = torch.arange(S)[None, :].double()
    dist = (P * (i - j).abs()).sum(-1)
    rows = [r for r in range(1, L) if r - 1 < S]
    prev = (torch.stack([P[:, :, r, r - 1] for r in rows], -1).mean((0, 2))
            if rows else P.new_zeros(H))
    return [ent.mean((0, 2)), P.max(-1).values.mean((0, 2)),
            dist.mean((0, 2)), P[..., 0].mean((0, 2)), prev]


def js_matrix(P):
    H = P.shape[1]
    out = torch.zeros(H, H, dtype=torch.float64)
    for h in range(H):
        for g in range(H):
            p, q = P[:, h], P[:, g]
            m = 0.5 * (p + q)

            def kl(a):
                return torch.where(a > 0, a * torch.log(a / m), a.new_zeros(()))

            out[h, g] = (0.5 * (kl(p) + kl(q))).sum(-1).mean()
    return out


def case(name, E, H, N, L, S, opt, rng, out_dir):
    torch.manual_seed(int(rng.integers(1 << 30)))
    bf, causal = opt.get("batch_first", 0), opt.get("causal", 0)
    m = torch.nn.MultiheadAttention(E, H, add_zero_attn=bool(
        opt.get("add_zero_attn", 0))).double().eval()
    with torch.no_grad():
        m.in_proj_bias.normal_(0, 0.2)
        m.out_proj.bias.normal_(0, 0.2)
        for p in m.parameters():  # the values the f32 layer holds
            p.copy_(p.float().double())

    def randn(*shape):  # f32 values, as the file stores them
        return torch.randn(*shape, dtype=torch.float32).double()

    q = randn(N, L, E)
    k = q if S == L and name.startswith("self") else randn(N, S, E)
    G = randn(N, L, E)
    gates = torch.ones(N, H, dtype=torch.float64, requires_grad=True)
    Y, P, Z = head_outputs(m, q, k, gates, causal)
    # the hand-written forward is the module's
    mask = (torch.triu(torch.ones(L, S, dtype=torch.bool), 1)
            if causal else None)
    Yt, Pt = m(q.transpose(0, 1), k.transpose(0, 1), k.transpose(0, 1),
               attn_mask=mask, need_weights=True,
               average_attn_weights=False)
    assert torch.allclose(Yt.transpose(0, 1), Y, atol=1e-10)
    assert torch.allclose(Pt, P, atol=1e-12)
    (G * Y).sum().backward()
    graw = gates.grad.abs().mean(0)
    Y, P, Z = Y.detach(), P.detach(), Z.detach()
    abl = (Z.norm(dim=(2, 3)) / Y.norm(dim=(1, 2))[:, None]).mean(0)
    Zf = Z.transpose(0, 1).reshape(H, -1)
    dots = Zf @ Zf.T
    nrm = dots.diag().sqrt()
    cos = dots / (nrm[:, None] * nrm[None, :])
    ent, conf, dist, first, prev = row_stats(P)

    def layout(x):  # (N, T, F) -> the layer's layout
        return x if bf else x.transpose(0, 1)

    tensors = [("layer." + key, "F64", v.detach().numpy())
               for key, v in m.state_dict().items()]
    tensors += [("query", "F32", layout(q).contiguous().numpy()),
                ("key", "F32", layout(k).contiguous().numpy()),
                ("grad", "F32", layout(G).contiguous().numpy())]
    expect = {"entropy": ent, "confidence": conf, "distance": dist,
              "first_key": first, "prev_token": prev, "ablation": abl,
              "gradient_raw": graw, "gradient": graw / graw.norm(),
              "js": js_matrix(P), "cosine": cos}
    tensors += [(k2, "F64", v.numpy()) for k2, v in expect.items()]
    meta = {"embed_dim": E, "num_heads": H, "batch_first": bf,
            "causal": causal, "add_zero_attn": opt.get("add_zero_attn", 0)}
    write_safetensors(os.path.join(out_dir, name + ".safetensors"), tensors,
                      meta)


def main():
    a = parse_args(__doc__, DEFAULT_OUT, DEFAULT_SEED)
    rng = np.random.default_rng(a.seed)
    for name, (E, H, N, L, S, opt) in CASES.items():
        case(name, E, H, N, L, S, opt, rng, a.out)
        print("wrote", name)


if __name__ == "__main__":
    main()
