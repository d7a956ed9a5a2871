#!/usr/bin/env python3
# gen_backward_fixtures.py: writes the PyTorch float64 autograd fixtures
# (tests/fixtures/backward/*.safetensors) that tests/test_backward.c runs
# mha_layer_backward and mha_adamw_step against.
#
#     /usr/bin/python3 tests/gen_backward_fixtures.py            # regenerate
#     /usr/bin/python3 tests/gen_backward_fixtures.py --seed 7 --out DIR
#
# Each case is an nn.MultiheadAttention forward written out in float64 with
# libmha's documented choice for a query row whose keys are all masked (its
# attention result, and so every gradient through it, is 0; PyTorch gives
# NaN), checked here against nn.MultiheadAttention's own autograd wherever
# no row is fully masked; the loss is sum(Y * dY). A file holds the
# weights under their state_dict names (F32, what fp32 holds), query, key,
# value (F32; one "query" when the input is shared), the masks (F32:
# additive, or 0/1 when "mask_bool"/"kpm_bool"), grad_output (F32), out and
# every gradient as F64: "grad.<state_dict name>", grad_query, grad_key,
# grad_value (grad_query alone, the sum, for a shared input), and for the
# gate cases head_gates (F32) and grad_head_gates (F64). The layer's
# config and call options are metadata. "large" scales the inputs by 10:
# scores of about 100, a saturated softmax. (At 30, scores near 1000, the
# backward's probabilities recomputed from an fp32 row LSE, whose ulp there
# is 6e-5, are off by that much relative, and the input gradients by about
# 1e-4 of their scale: FlashAttention-2's design limit in fp32.)
#
# adamw.safetensors: 10 torch.optim.AdamW steps (lr warm-up in "lrs") of
# the "bias_kv" layer on the loss sum(Y * dY): the final weights as
# "final.<name>" (F64). Not "plain": there the key bias's gradient is 0
# (softmax ignores a shift shared by every key) up to rounding, which
# Adam's m / sqrt(v) would blow up to steps of lr in fp32 and nothing in
# float64.
#
# train_example.safetensors: examples/train/train.c's run (its xorshift
# data and weights, its loss and warm-up) for "steps" steps in float64: the
# student's final weights as "final.<name>" (F64), for the train_example
# test (tests/check_train_example.py).

import math
import os

import numpy as np

from fixture_gen import need_torch, parse_args, write_safetensors

torch = need_torch("gen_backward_fixtures.py")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures", "backward")
DEFAULT_SEED = 1818

# name: E, H, N (0: unbatched), L, S, options
CASES = {
    "plain": (8, 2, 2, 3, 4, {}),
    "causal": (8, 2, 2, 4, 4, {"causal": 1}),
    "mask_f32_2d": (8, 2, 2, 3, 5, {"mask": "f32_2d"}),
    "mask_bool_3d": (8, 2, 2, 3, 5, {"mask": "bool_3d"}),
    "kpm": (8, 2, 3, 3, 4, {"kpm": "bool"}),
    "bias_kv": (8, 2, 2, 3, 4, {"add_bias_kv": 1}),
    "zero_attn_bias_kv": (8, 4, 2, 3, 4, {"add_bias_kv": 1,
                                          "add_zero_attn": 1}),
    "kdim_vdim": (8, 2, 2, 3, 4, {"kdim": 5, "vdim": 6}),
    "batch_first_bias_kv": (8, 2, 3, 3, 4, {"batch_first": 1,
                                            "add_bias_kv": 1}),
    "unbatched": (8, 2, 0, 3, 5, {"causal": 1}),
    "self_shared": (8, 2, 2, 4, 4, {"shared": 1, "causal": 1}),
    "masked_row": (8, 2, 2, 3, 4, {"mask": "bool_2d_row", "kpm": "f32"}),
    "no_bias": (8, 2, 2, 3, 4, {"bias": 0, "add_zero_attn": 1}),
    "large": (8, 2, 2, 3, 4, {"xscale": 10.0}),
    "everything": (12, 3, 2, 4, 5, {"batch_first": 1, "kdim": 7, "vdim": 5,
                                    "add_bias_kv": 1, "add_zero_attn": 1,
                                    "mask": "f32_3d", "kpm": "bool",
                                    "causal": 1}),
}

# Head gates (mha_forward_args.head_gates, [H] or [N, H], one of them 0):
# written after the others, so their data stays as it was.
GATE_CASES = {
    "head_gates_2d": (8, 4, 2, 3, 4, {"gates": 2}),
    "head_gates_1d": (8, 4, 3, 3, 5, {"gates": 1, "batch_first": 1,
                                      "causal": 1, "add_bias_kv": 1}),
}


def f32(a):
    """What fp32 holds, in float64."""
    return torch.tensor(np.asarray(a, dtype=np.float32).astype(np.float64))


def make_weights(E, o, rng):
    kd, vd = o.get("kdim", E), o.get("vdim", E)
    w = {}
    if kd == E and vd == E:
        w["in_proj_weight"] = f32(rng.standard_normal((3 * E, E)) / math.sqrt(E))
    else:
        w["q_proj_weight"] = f32(rng.standard_normal((E, E)) / math.sqrt(E))
        w["k_proj_weight"] = f32(rng.standard_normal((E, kd)) / math.sqrt(kd))
        w["v_proj_weight"] = f32(rng.standard_normal((E, vd)) / math.sqrt(vd))
    if o.get("bias", 1):
        w["in_proj_bias"] = f32(rng.standard_normal(3 * E) * 0.1)
    w["out_proj.weight"] = f32(rng.standard_normal((E, E)) / math.sqrt(E))
    if o.get("bias", 1):
        w["out_proj.bias"] = f32(rng.standard_normal(E) * 0.1)
    if o.get("add_bias_kv"):
        w["bias_k"] = f32(rng.standard_normal((1, 1, E)))
        w["bias_v"] = f32(rng.standard_normal((1, 1, E)))
    return w


def projections(w, E):
    if "in_proj_weight" in w:
        W = w["in_proj_weight"]
        ws = (W[:E], W[E:2 * E], W[2 * E:])
    else:
        ws = (w["q_proj_weight"], w["k_proj_weight"], w["v_proj_weight"])
    b = w.get("in_proj_bias")
    bs = (b[:E], b[E:2 * E], b[2 * E:]) if b is not None else (None,) * 3
    return ws, bs


def lin(x, W, b):
    y = x @ W.t()
    return y + b if b is not None else y


def forward(w, E, H, xq, xk, xv, mask, kpm, o, gates=None):
    """nn.MHA in float64 on batch-major (N, T, F) inputs; mask additive
    (L, S) or (N*H, L, S), kpm additive (N, S); rows with every key masked
    give 0; gates ([H] or [N, H]) multiply each head's output. Returns Y
    (N, L, E)."""
    N, L, S = xq.shape[0], xq.shape[1], xk.shape[1]
    d = E // H
    (Wq, Wk, Wv), (bq, bk, bv) = projections(w, E)
    q, k, v = lin(xq, Wq, bq), lin(xk, Wk, bk), lin(xv, Wv, bv)
    if o.get("add_bias_kv"):
        k = torch.cat([k, w["bias_k"].reshape(1, 1, E).expand(N, 1, E)], 1)
        v = torch.cat([v, w["bias_v"].reshape(1, 1, E).expand(N, 1, E)], 1)
    if o.get("add_zero_attn"):
        k = torch.cat([k, torch.zeros(N, 1, E, dtype=k.dtype)], 1)
        v = torch.cat([v, torch.zeros(N, 1, E, dtype=v.dtype)], 1)
    S2 = k.shape[1]
    qh = q.reshape(N, L, H, d).transpose(1, 2)
    kh = k.reshape(N, S2, H, d).transpose(1, 2)
    vh = v.reshape(N, S2, H, d).transpose(1, 2)
    s = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    add = torch.zeros(N, H, L, S, dtype=s.dtype)
    if mask is not None:
        add = add + (mask.reshape(N, H, L, S) if mask.dim() == 3 else mask)
    if kpm is not None:
        add = add + kpm.reshape(N, 1, 1, S)
    if o.get("causal"):
        c = torch.triu(torch.ones(L, S, dtype=torch.bool), 1)
        add = add.masked_fill(c, -math.inf)
    s = torch.cat([s[..., :S] + add, s[..., S:]], -1)
    dead = torch.isneginf(s).all(-1, keepdim=True)
    p = torch.softmax(torch.where(dead, torch.zeros_like(s), s), -1)
    p = p * (~dead)
    oh = p @ vh
    if gates is not None:
        oh = oh * gates.reshape(-1, H, 1, 1)
    out = oh.transpose(1, 2).reshape(N, L, E)
    return lin(out, w["out_proj.weight"], w.get("out_proj.bias"))


def torch_module(w, E, H, o):
    m = torch.nn.MultiheadAttention(
        E, H, bias=bool(o.get("bias", 1)),
        add_bias_kv=bool(o.get("add_bias_kv")),
        add_zero_attn=bool(o.get("add_zero_attn")), kdim=o.get("kdim"),
        vdim=o.get("vdim"), batch_first=True).double()
    m.load_state_dict({k: v.clone() for k, v in w.items()})
    return m


def make_masks(N, H, L, S, o, rng):
    """(libmha's mask as stored, additive float64) for attn_mask and kpm."""
    mask = kpm = (None, None)
    kind = o.get("mask")
    if kind == "f32_2d" or kind == "f32_3d":
        shape = (L, S) if kind == "f32_2d" else (N * H, L, S)
        m = rng.standard_normal(shape)
        m[rng.random(shape) < 0.15] = -np.inf
        m[..., 0] = 0.0  # every row keeps a key
        mask = (m.astype(np.float32), f32(m))
    elif kind in ("bool_3d", "bool_2d_row"):
        shape = (N * H, L, S) if kind == "bool_3d" else (L, S)
        m = rng.random(shape) < 0.3
        m[..., 0] = False
        if kind == "bool_2d_row":
            m[1, :] = True  # query row 1 attends to nothing
        mask = (m.astype(np.float32),
                torch.zeros(shape, dtype=torch.float64).masked_fill(
                    torch.tensor(m), -math.inf))
    if o.get("kpm") == "bool":
        m = rng.random((N, S)) < 0.3
        m[:, 0] = False
        kpm = (m.astype(np.float32),
               torch.zeros((N, S), dtype=torch.float64).masked_fill(
                   torch.tensor(m), -math.inf))
    elif o.get("kpm") == "f32":
        m = rng.standard_normal((N, S)) * 0.5
        kpm = (m.astype(np.float32), f32(m))
    return mask, kpm


def to_layout(x, o, unbatched):
    """Batch-major (N, T, F) to the caller's layout."""
    if unbatched:
        return x[0]
    return x if o.get("batch_first") else x.transpose(0, 1)


def make_case(E, H, N0, L, S, o, rng):
    N = max(N0, 1)
    kd, vd = o.get("kdim", E), o.get("vdim", E)
    xs = o.get("xscale", 1.0)
    w = make_weights(E, o, rng)
    xq = f32(rng.standard_normal((N, L, E)) * xs)
    if o.get("shared"):
        xk = xv = xq
    else:
        xk = f32(rng.standard_normal((N, S, kd)) * xs)
        xv = f32(rng.standard_normal((N, S, vd)) * xs)
    (mask_np, mask), (kpm_np, kpm) = make_masks(N, H, L, S, o, rng)
    dy = f32(rng.standard_normal((N, L, E)))
    gates = None
    if o.get("gates"):
        g = rng.uniform(0.5, 1.5, (N, H) if o["gates"] == 2 else (H,))
        g[..., 1] = 0.0  # head 1 gated off: computed anyway in training
        gates = f32(g).requires_grad_()
    leaves = {k: v.clone().requires_grad_() for k, v in w.items()}
    xin = [xq.clone().requires_grad_()]
    if o.get("shared"):
        ins = (xin[0],) * 3
    else:
        xin += [xk.clone().requires_grad_(), xv.clone().requires_grad_()]
        ins = tuple(xin)
    y = forward(leaves, E, H, *ins, mask, kpm, o, gates)
    (y * dy).sum().backward()
    dead = mask is not None and bool(torch.isneginf(mask).all(-1).any())
    if not dead and gates is None:  # nn.MHA has no gates
        check_against_module(w, E, H, ins, mask, kpm, dy, o, y, leaves, xin)
    unb = N0 == 0
    tensors = [(k, "F32", v.numpy()) for k, v in w.items()]
    names = ["query", "key", "value"][:len(xin)]
    for name, x in zip(names, xin):
        tensors.append((name, "F32", to_layout(x.detach(), o, unb).numpy()))
        tensors.append(("grad_" + name, "F64",
                        to_layout(x.grad, o, unb).numpy()))
    if mask_np is not None:
        tensors.append(("attn_mask", "F32", mask_np))
    if kpm_np is not None:
        tensors.append(("key_padding_mask", "F32",
                        kpm_np[0] if unb else kpm_np))
    tensors.append(("grad_output", "F32", to_layout(dy, o, unb).numpy()))
    tensors.append(("out", "F64", to_layout(y.detach(), o, unb).numpy()))
    for k, v in leaves.items():
        tensors.append(("grad." + k, "F64", v.grad.numpy()))
    if gates is not None:
        tensors.append(("head_gates", "F32", gates.detach().numpy()))
        tensors.append(("grad_head_gates", "F64", gates.grad.numpy()))
    meta = {"embed_dim": E, "num_heads": H, "kdim": kd, "vdim": vd,
            "bias": o.get("bias", 1), "add_bias_kv": o.get("add_bias_kv", 0),
            "add_zero_attn": o.get("add_zero_attn", 0),
            "batch_first": o.get("batch_first", 0), "causal": o.get("causal", 0),
            "shared": o.get("shared", 0),
            "mask_bool": int(str(o.get("mask", "")).startswith("bool")),
            "kpm_bool": int(o.get("kpm") == "bool")}
    return tensors, meta, (w, xin, dy, mask, kpm)


def check_against_module(w, E, H, ins, mask, kpm, dy, o, y, leaves, xin):
    """The written-out forward and its gradients equal nn.MHA's autograd
    (causal passed as a mask: torch 1.13 has no is_causal)."""
    m = torch_module(w, E, H, o)
    xs = [x.detach().clone().requires_grad_() for x in xin]
    ins2 = (xs[0],) * 3 if o.get("shared") else tuple(xs)
    L, S = ins2[0].shape[1], ins2[1].shape[1]
    am = mask
    if o.get("causal"):
        c = torch.zeros(L, S, dtype=torch.float64).masked_fill(
            torch.triu(torch.ones(L, S, dtype=torch.bool), 1), -math.inf)
        am = c if am is None else am + c
    y2, _ = m(*ins2, key_padding_mask=kpm, attn_mask=am, need_weights=False)
    (y2 * dy).sum().backward()
    assert torch.allclose(y, y2, atol=1e-10), "forward differs from nn.MHA"
    for x, x2 in zip(xin, xs):
        assert torch.allclose(x.grad, x2.grad, atol=1e-9), "input grad"
    for k, p in m.named_parameters():
        assert torch.allclose(leaves[k].grad, p.grad, atol=1e-9), k


def adamw_fixture(rng):
    """10 AdamW steps with a linear warm-up on the "bias_kv" case's
    layer."""
    E, H, N, L, S, o = CASES["bias_kv"]
    tensors, meta, (w, xin, dy, mask, kpm) = make_case(E, H, N, L, S, o, rng)
    params = {k: v.clone().requires_grad_() for k, v in w.items()}
    opt = torch.optim.AdamW(params.values(), lr=0.01, betas=(0.9, 0.99),
                            eps=1e-6, weight_decay=0.05)
    lrs = [0.02 * min(1.0, (t + 1) / 4) for t in range(10)]
    for lr in lrs:
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        y = forward(params, E, H, *[x.detach() for x in xin], mask, kpm, o)
        (y * dy).sum().backward()
        opt.step()
    keep = [t for t in tensors if not t[0].startswith("grad")
            and t[0] != "out"]
    keep.append(("grad_output", "F32", [t for t in tensors
                                        if t[0] == "grad_output"][0][2]))
    keep += [("final." + k, "F64", v.detach().numpy())
             for k, v in params.items()]
    keep.append(("lrs", "F64", np.array(lrs)))
    meta.update({"beta1": 0.9, "beta2": 0.99, "eps": 1e-6,
                 "weight_decay": 0.05, "steps": len(lrs)})
    return keep, meta


class Xorshift:
    """examples/train/train.c's generator: xorshift32, uniform in [-1, 1)
    with 24 bits (exact in fp32)."""

    def __init__(self, seed):
        self.s = seed

    def uniform(self, n, scale=1.0):
        out = np.empty(n)
        for i in range(n):
            x = self.s
            x ^= (x << 13) & 0xFFFFFFFF
            x ^= x >> 17
            x ^= (x << 5) & 0xFFFFFFFF
            self.s = x
            out[i] = ((x >> 8) / 16777216.0 * 2.0 - 1.0) * scale
        return out


def train_example_fixture(steps=20, lr=0.01, warmup=20):
    """The example's teacher, student and data; AdamW's defaults."""
    E, H, L, N = 16, 4, 12, 4
    o = {"add_bias_kv": 1, "causal": 1}
    gen = Xorshift(20240518)
    shapes = [("in_proj_weight", (3 * E, E)), ("in_proj_bias", (3 * E,)),
              ("out_proj.weight", (E, E)), ("out_proj.bias", (E,)),
              ("bias_k", (1, 1, E)), ("bias_v", (1, 1, E))]
    layers = [{k: torch.tensor(gen.uniform(int(np.prod(s)), 0.25)).reshape(s)
               for k, s in shapes} for _ in range(2)]
    teacher, student = layers
    x = torch.tensor(gen.uniform(L * N * E)).reshape(L, N, E).transpose(0, 1)
    target = forward(teacher, E, H, x, x, x, None, None, o)
    params = {k: v.clone().requires_grad_() for k, v in student.items()}
    opt = torch.optim.AdamW(params.values(), lr=lr)
    for t in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (t + 1) / warmup)
        opt.zero_grad()
        y = forward(params, E, H, x, x, x, None, None, o)
        ((y - target) ** 2).mean().backward()
        opt.step()
    tensors = [("final." + k, "F64", v.detach().numpy())
               for k, v in params.items()]
    return tensors, {"steps": steps, "lr": lr, "warmup": warmup}


def main():
    args = parse_args(__doc__, DEFAULT_OUT, DEFAULT_SEED)
    rng = np.random.default_rng(args.seed)
    for name, (E, H, N, L, S, o) in CASES.items():
        tensors, meta, _ = make_case(E, H, N, L, S, o, rng)
        write_safetensors(os.path.join(args.out, name + ".safetensors"),
                          tensors, meta)
    tensors, meta = adamw_fixture(rng)
    write_safetensors(os.path.join(args.out, "adamw.safetensors"), tensors,
                      meta)
    tensors, meta = train_example_fixture()
    write_safetensors(os.path.join(args.out, "train_example.safetensors"),
                      tensors, meta)
    for name, (E, H, N, L, S, o) in GATE_CASES.items():
        tensors, meta, _ = make_case(E, H, N, L, S, o, rng)
        write_safetensors(os.path.join(args.out, name + ".safetensors"),
                          tensors, meta)
    print("wrote %d fixtures to %s" % (len(CASES) + len(GATE_CASES) + 2,
                                       args.out))


if __name__ == "__main__":
    main()
