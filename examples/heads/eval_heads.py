#!/usr/bin/python3
"""eval_heads.py: the head-pruning experiment of issue 15 on the character
language model that train_charlm.py trained, with libmha running every
attention layer.

    python3 examples/heads/eval_heads.py [--devices cpu,vulkan:0,opencl:0]
        [--ks 1,2,4,6] [--seeds 5] [--json out.json] [--markdown out.md]
    python3 examples/heads/eval_heads.py --check [--chars 1024]

(PYTHONPATH=python and MHA_LIBRARY=build/libmha.so from a build tree.)

1. Parity: held-out perplexity with each layer's attention a
   libmha.MultiheadAttention loaded from charlm.safetensors (prefix
   "layers.i.self_attn.") equals PyTorch's own, on every device.
2. Importance (Michel et al. 2019): a gate g_h multiplies each head's output
   before out_proj; I_h = sum over windows |dL/dg_h| at g = 1, by torch
   autograd on the first half of heldout.txt, normalised per layer.
3. Pruning: for each k, the k least important heads of every layer are
   removed from the libmha layers (mha_layer_prune_heads), against k random
   heads (several seeds); held-out perplexity on the second half of
   heldout.txt, checked against PyTorch with those heads gated to 0; the
   median attention time of each layer, its weight bytes and the device's
   memory before and after pruning.

--check runs only (1) on the first --chars characters and exits non-zero
when libmha's perplexity is off by more than 1e-4 relative (exit 77 without
PyTorch: CTest's skip).
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "charlm.safetensors")
HELDOUT = os.path.join(HERE, "heldout.txt")
PARITY_RTOL = 1e-4

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # CTest counts exit 77 as skipped
    print("eval_heads.py: skipped, %s" % e)
    sys.exit(77)

sys.path.insert(0, HERE)
from train_charlm import encode, load_model  # noqa: E402

import libmha  # noqa: E402


class LibmhaSelfAttention(torch.nn.Module):
    """Stands in for a block's nn.MultiheadAttention: the same call, run by
    a libmha layer (which may have fewer heads after pruning)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, query, key, value, attn_mask=None, need_weights=False):
        return self.layer(query, key, value, attn_mask=attn_mask,
                          need_weights=need_weights)


def libmha_layers(model, device):
    """One libmha layer per block, each loaded from the committed file."""
    layers = []
    for i, block in enumerate(model.layers):
        m = block.self_attn
        layer = libmha.MultiheadAttention(m.embed_dim, m.num_heads,
                                          batch_first=True, device=device)
        layer.load_safetensors(WEIGHTS, "layers.%d.self_attn." % i)
        layers.append(layer)
    return layers


class Swapped:
    """`with Swapped(model, layers):` runs the model's attention on layers."""

    def __init__(self, model, layers):
        self.model, self.layers = model, layers

    def __enter__(self):
        self.saved = [b.self_attn for b in self.model.layers]
        for b, layer in zip(self.model.layers, self.layers):
            b.self_attn = LibmhaSelfAttention(layer)
        return self.model

    def __exit__(self, *exc):
        for b, m in zip(self.model.layers, self.saved):
            b.self_attn = m


def windows(ids, context):
    """Non-overlapping (input, target) windows of the character ids."""
    n = (len(ids) - 1) // context
    x = torch.from_numpy(ids[:n * context].reshape(n, context))
    y = torch.from_numpy(ids[1:n * context + 1].reshape(n, context))
    return x, y


def nll(logits, y):
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                 y.reshape(-1), reduction="mean"))


def gated_logits(model, x, gates):
    """The model's forward with each layer's attention written out so that
    gates[i] ([H] or [B, H]) multiplies head h's output before out_proj."""
    t = x.shape[1]
    h = model.tok(x) + model.pos(torch.arange(t))
    mask = torch.nn.Transformer.generate_square_subsequent_mask(t)
    for block, g in zip(model.layers, gates):
        m = block.self_attn
        a = block.ln1(h)
        B, T, E = a.shape
        H, d = m.num_heads, E // m.num_heads
        q, k, v = F.linear(a, m.in_proj_weight, m.in_proj_bias).split(E, -1)
        q, k, v = (z.reshape(B, T, H, d).transpose(1, 2) for z in (q, k, v))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, -1)
        o = p @ v                                          # [B, H, T, d]
        g = g.reshape(-1, H) if g.dim() == 1 else g
        o = o * g[:, :, None, None]
        o = o.transpose(1, 2).reshape(B, T, E)
        h = h + F.linear(o, m.out_proj.weight, m.out_proj.bias)
        h = h + block.ff(block.ln2(h))
    return model.head(model.ln_f(h))


def gradient_importance(model, x, y):
    """Michel et al.'s I_h = sum over windows |dL_w/dg_h|, per layer
    divided by its L2 norm; gates are per window ([B, H]) so each window's
    gradient is taken before the absolute value."""
    H = model.layers[0].self_attn.num_heads
    gates = [torch.ones(x.shape[0], H, requires_grad=True)
             for _ in model.layers]
    logits = gated_logits(model, x, gates)
    # sum of per-window mean losses: d/dg[b] is window b's own gradient
    loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
    loss.mean(1).sum().backward()
    imp = [g.grad.abs().sum(0) for g in gates]
    return [(i / i.norm()).tolist() for i in imp]


def parity(model, x, y, specs):
    """PyTorch's held-out loss and libmha's on each device."""
    ones = [torch.ones(b.self_attn.num_heads) for b in model.layers]
    with torch.no_grad():
        want = nll(model(x), y)
        gated = nll(gated_logits(model, x, ones), y)
        rows = {"pytorch": want, "pytorch_gated_reference": gated}
        for spec in specs:
            dev = libmha.Device(spec)
            layers = libmha_layers(model, dev)
            with Swapped(model, layers):
                rows[spec] = nll(model(x), y)
            dev.close()
    return rows


def attention_inputs(model, x):
    """The input each layer's attention sees on x (its ln1 output)."""
    seen = []
    hooks = [b.ln1.register_forward_hook(lambda m, i, o: seen.append(o))
             for b in model.layers]
    with torch.no_grad():
        model(x)
    for hk in hooks:
        hk.remove()
    return [s.numpy() for s in seen]


def median_forward_s(layer, dev, a, mask, reps):
    """Median wall time of one device-resident forward of layer on a."""
    at = libmha.Tensor(a, dev)
    mt = libmha.Tensor(mask, dev)
    out = libmha.Tensor.empty(a.shape, np.float32, dev)
    fa = libmha._capi.ForwardArgs()
    lib = dev._lib
    lib.mha_forward_args_init_sized(ctypes.byref(fa), ctypes.sizeof(fa))
    fa.query = fa.key = fa.value = at.handle("time")
    fa.attn_mask, fa.output = mt.handle("time"), out.handle("time")
    times = []
    for _ in range(reps + 1):                  # the first call plans
        t0 = time.perf_counter()
        with dev.lock:
            dev.check(lib.mha_layer_forward(layer.handle("time"),
                                            ctypes.byref(fa)))
        times.append(time.perf_counter() - t0)
    for t in (at, mt, out):
        t.close()
    return float(np.median(times[1:]))


def prune(layer, heads):
    """Removes heads (sorted indices) from layer: mha_layer_prune_heads."""
    lib = layer.device._lib
    fn = lib.mha_layer_prune_heads
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64),
                   ctypes.c_int64]
    arr = (ctypes.c_int64 * len(heads))(*heads)
    with layer.device.lock:
        layer.device.check(fn(layer.handle("prune"), arr, len(heads)))


def weight_bytes(E, kept, head_dim):
    """fp32 bytes of a layer keeping `kept` heads: in_proj (3 kept*d x E and
    bias), out_proj (E x kept*d and bias)."""
    inner = kept * head_dim
    return 4 * (3 * inner * E + 3 * inner + E * inner + E)


def pruned_run(model, spec, plan, x, y, inputs, mask, reps, timed):
    """Perplexity (libmha and the gated PyTorch reference), and per-layer
    time, weight bytes and device memory, with plan[i] pruned from layer i."""
    H = model.layers[0].self_attn.num_heads
    E = model.layers[0].self_attn.embed_dim
    dev = libmha.Device(spec)
    layers = libmha_layers(model, dev)
    row = {"memory_before": dev.memory_usage()[0]}
    if timed:
        row["ms_before"] = [1e3 * median_forward_s(la, dev, a, mask, reps)
                            for la, a in zip(layers, inputs)]
    for la, heads in zip(layers, plan):
        if heads:
            prune(la, sorted(heads))
    row["memory_after"] = dev.memory_usage()[0]
    row["weight_bytes"] = [weight_bytes(E, H - len(p), E // H) for p in plan]
    if timed:
        row["ms_after"] = [1e3 * median_forward_s(la, dev, a, mask, reps)
                           for la, a in zip(layers, inputs)]
    with torch.no_grad():
        with Swapped(model, layers):
            row["loss"] = nll(model(x), y)
        gates = []
        for p in plan:
            g = torch.ones(H)
            g[list(p)] = 0
            gates.append(g)
        row["loss_gated_reference"] = nll(gated_logits(model, x, gates), y)
    dev.close()
    return row


def experiment(model, calib, evalset, spec, ks, seeds, reps):
    x, y = evalset
    H = model.layers[0].self_attn.num_heads
    imp = gradient_importance(model, *calib)
    order = [sorted(range(H), key=lambda h: li[h]) for li in imp]
    mask = torch.nn.Transformer.generate_square_subsequent_mask(
        x.shape[1]).numpy()
    inputs = attention_inputs(model, x)
    base = pruned_run(model, spec, [[] for _ in imp], x, y, inputs, mask,
                      reps, True)
    result = {"importance": imp, "unpruned": base, "k": {}}
    for k in ks:
        by_imp = pruned_run(model, spec, [o[:k] for o in order], x, y,
                            inputs, mask, reps, True)
        by_imp["heads"] = [o[:k] for o in order]
        rand = []
        for s in range(seeds):
            r = np.random.default_rng(1000 + s)
            plan = [sorted(r.choice(H, k, replace=False).tolist())
                    for _ in imp]
            run = pruned_run(model, spec, plan, x, y, inputs, mask, reps,
                             False)
            run["heads"] = plan
            rand.append(run)
        result["k"][k] = {"importance": by_imp, "random": rand}
        print("k=%d: ppl by importance %.3f, random %s" % (
            k, math.exp(by_imp["loss"]),
            " ".join("%.3f" % math.exp(r["loss"]) for r in rand)),
            flush=True)
    return result


def markdown(res, spec, H):
    base = res["unpruned"]
    ppl0 = math.exp(base["loss"])
    ms0 = sum(base["ms_before"])
    lines = [
        "| heads pruned / layer | ppl, by gradient importance | ppl, random "
        "(mean ± sd, %d seeds) | attention ms (2 layers, %s) | time vs "
        "unpruned | weight KiB / layer | device memory KiB |"
        % (len(next(iter(res["k"].values()))["random"]), spec),
        "|---|---|---|---|---|---|---|",
        "| 0 | %.3f | %.3f | %.2f | 1.00 | %.0f | %.0f |" % (
            ppl0, ppl0, ms0, base["weight_bytes"][0] / 1024,
            base["memory_after"] / 1024)]
    for k, r in res["k"].items():
        imp, rand = r["importance"], r["random"]
        rp = [math.exp(x["loss"]) for x in rand]
        ms = sum(imp["ms_after"])
        lines.append("| %d | %.3f | %.3f ± %.3f | %.2f | %.2f (heads kept "
                     "%.2f) | %.0f | %.0f |" % (
                         k, math.exp(imp["loss"]), np.mean(rp), np.std(rp),
                         ms, ms / sum(imp["ms_before"]), (H - k) / H,
                         imp["weight_bytes"][0] / 1024,
                         imp["memory_after"] / 1024))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default=None,
                    help="comma-separated specs for the parity check "
                         "(default: every device libmha finds)")
    ap.add_argument("--prune-device", default="cpu")
    ap.add_argument("--ks", default="1,2,4,6")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--chars", type=int, default=1024)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, vocab, config = load_model(WEIGHTS)
    ctx = config["context"]
    ids = encode(open(HELDOUT, encoding="utf-8").read(), vocab)
    specs = (args.devices.split(",") if args.devices else
             [d["spec"] for d in libmha.devices()])
    required = [b for b in os.environ.get("MHA_REQUIRE", "").split(",") if b]
    missing = [b for b in required
               if not any(s.startswith(b + ":") for s in specs)]
    if missing:
        print("eval_heads.py: MHA_REQUIRE names %s; no such device among %s"
              % (",".join(missing), ", ".join(specs)))
        return 1
    half = len(ids) // 2
    evalset = windows(ids[:args.chars + 1] if args.check else ids[half:], ctx)

    rows = parity(model, *evalset, specs)
    want = rows["pytorch"]
    bad = []
    for name, loss in rows.items():
        rel = abs(math.exp(loss) / math.exp(want) - 1)
        print("%-24s loss %.6f  ppl %.4f  rel.diff %.1e" % (
            name, loss, math.exp(loss), rel))
        if rel > PARITY_RTOL:
            bad.append(name)
    if bad:
        print("eval_heads.py: perplexity differs from PyTorch's by more "
              "than %g on %s" % (PARITY_RTOL, ", ".join(bad)))
        return 1
    if args.check:
        return 0

    ks = [int(k) for k in args.ks.split(",")]
    res = experiment(model, windows(ids[:half + 1], ctx), evalset,
                     args.prune_device, ks, args.seeds, args.reps)
    res["parity"] = rows
    table = markdown(res, args.prune_device, config["num_heads"])
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
