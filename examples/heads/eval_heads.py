#!/usr/bin/python3
"""eval_heads.py: the head-pruning experiment of issue 15 on the character
language model that train_charlm.py trained, with libmha running every
attention layer.

    python3 examples/heads/eval_heads.py [--devices cpu,vulkan:0,opencl:0]
        [--ks 1,2,4,6] [--seeds 5] [--json out.json] [--markdown out.md]
    python3 examples/heads/eval_heads.py --check [--chars 1024]
    python3 examples/heads/eval_heads.py --export-inputs DIR [--windows 4]

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
   median attention time of each layer (pruned and unpruned timed
   alternately, on --time-windows windows), its weight bytes and the
   device's memory before and after pruning.

--check runs only (1) on the first --chars characters and exits non-zero
when libmha's perplexity is off by more than 1e-4 relative (exit 77 without
PyTorch: CTest's skip). --export-inputs writes, for mha-heads, each layer's
attention input and the loss gradient at its output on the first held-out
windows of the second half (layers.i.input.npy, layers.i.grad.npy, [N, 128,
256]) and each window's characters (tokens.b.txt, one a line).
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


class Timer:
    """Times device-resident forwards of one layer on one input."""

    def __init__(self, layer, dev, a, mask):
        self.layer, self.dev = layer, dev
        self.tensors = [libmha.Tensor(a, dev), libmha.Tensor(mask, dev),
                        libmha.Tensor.empty(a.shape, np.float32, dev)]
        at, mt, out = (t.handle("time") for t in self.tensors)
        self.args = libmha._capi.ForwardArgs()
        dev._lib.mha_forward_args_init_sized(ctypes.byref(self.args),
                                             ctypes.sizeof(self.args))
        self.args.query = self.args.key = self.args.value = at
        self.args.attn_mask, self.args.output = mt, out
        self()                                     # the first call plans

    def __call__(self):
        """(wall, CPU) seconds of one forward; the CPU time of the process
        (libmha's worker threads included) counts the work done, which the
        machine's other load does not inflate as it does the wall time."""
        t0, c0 = time.perf_counter(), time.process_time()
        with self.dev.lock:
            self.dev.check(self.dev._lib.mha_layer_forward(
                self.layer.handle("time"), ctypes.byref(self.args)))
        return time.perf_counter() - t0, time.process_time() - c0

    def close(self):
        for t in self.tensors:
            t.close()


def median_ms_pair(before, after, inputs, mask, reps):
    """Median forward ms (wall and CPU) of each layer unpruned and pruned,
    the two timed alternately, in turns first, so the machine's load falls
    on both alike."""
    out = {"ms_before": [], "ms_after": [], "cpu_ms_before": [],
           "cpu_ms_after": []}
    for (la, da), (lb, db), a in zip(before, after, inputs):
        ta, tb = Timer(la, da, a, mask), Timer(lb, db, a, mask)
        runs = np.array([(ta(), tb()) if r % 2 else tuple(reversed(
            (tb(), ta()))) for r in range(reps)]) * 1e3
        for i, name in enumerate(("before", "after")):
            out["ms_" + name].append(float(np.median(runs[:, i, 0])))
            out["cpu_ms_" + name].append(float(np.median(runs[:, i, 1])))
        ta.close()
        tb.close()
    return out


def weight_bytes(E, kept, head_dim):
    """fp32 bytes of a layer keeping `kept` heads: in_proj (3 kept*d x E and
    bias), out_proj (E x kept*d and bias)."""
    inner = kept * head_dim
    return 4 * (3 * inner * E + 3 * inner + E * inner + E)


def open_pruned(model, spec, plan):
    """A device with the model's libmha layers, plan[i] pruned from layer
    i; and the device memory in use before and after pruning."""
    dev = libmha.Device(spec)
    layers = libmha_layers(model, dev)
    loaded = dev.memory_usage()[0]
    for la, heads in zip(layers, plan):
        if heads:
            la.prune_heads(sorted(heads))
        want = [h for h in range(la.num_heads) if h not in heads]
        if la.kept_heads() != want:
            raise RuntimeError("layer keeps heads %s; expected %s"
                               % (la.kept_heads(), want))
    return dev, layers, {"memory_loaded": loaded,
                         "memory_pruned": dev.memory_usage()[0]}


def pruned_run(model, spec, plan, x, y, timing=None):
    """Held-out loss with plan[i] pruned from layer i (libmha, and PyTorch
    with those heads gated to 0), weight bytes and device memory; with
    timing = (unpruned (layer, device) pairs, inputs, mask, reps) also the
    attention time of each layer before and after pruning."""
    H = model.layers[0].self_attn.num_heads
    E = model.layers[0].self_attn.embed_dim
    dev, layers, row = open_pruned(model, spec, plan)
    row["weight_bytes"] = [weight_bytes(E, H - len(p), E // H) for p in plan]
    with torch.no_grad():
        with Swapped(model, layers):
            row["loss"] = nll(model(x), y)
        row["memory_eval"], row["memory_peak"] = dev.memory_usage()
        gates = []
        for p in plan:
            g = torch.ones(H)
            g[list(p)] = 0
            gates.append(g)
        row["loss_gated_reference"] = nll(gated_logits(model, x, gates), y)
    if timing:
        before, inputs, mask, reps = timing
        row.update(median_ms_pair(before, [(la, dev) for la in layers],
                                  inputs, mask, reps))
    dev.close()
    return row


def experiment(model, calib, evalset, spec, ks, seeds, reps, time_windows):
    x, y = evalset
    H = model.layers[0].self_attn.num_heads
    imp = gradient_importance(model, *calib)
    order = [sorted(range(H), key=lambda h: li[h]) for li in imp]
    mask = torch.nn.Transformer.generate_square_subsequent_mask(
        x.shape[1]).numpy()
    inputs = attention_inputs(model, x[:time_windows])
    ref_dev = libmha.Device(spec)
    ref = [(la, ref_dev) for la in libmha_layers(model, ref_dev)]
    timing = (ref, inputs, mask, reps)
    base = pruned_run(model, spec, [[] for _ in imp], x, y, timing)
    result = {"device": spec, "importance": imp, "unpruned": base, "k": {}}
    for k in ks:
        plan = [o[:k] for o in order]
        by_imp = pruned_run(model, spec, plan, x, y, timing)
        by_imp["heads"] = plan
        rand = []
        for s in range(seeds):
            r = np.random.default_rng(1000 + s)
            plan = [sorted(r.choice(H, k, replace=False).tolist())
                    for _ in imp]
            run = pruned_run(model, spec, plan, x, y)
            run["heads"] = plan
            rand.append(run)
        result["k"][k] = {"importance": by_imp, "random": rand}
        print("k=%d: ppl by importance %.3f, random %s; attention ms %s -> "
              "%s" % (k, math.exp(by_imp["loss"]),
                      " ".join("%.3f" % math.exp(r["loss"]) for r in rand),
                      _ms(by_imp["ms_before"]), _ms(by_imp["ms_after"])),
              flush=True)
    ref_dev.close()
    return result


def _ms(v):
    return "+".join("%.1f" % t for t in v)


def markdown(res, H):
    """The before/after table: perplexity by importance and at random,
    attention time, weights and device memory."""
    n_seeds = len(next(iter(res["k"].values()))["random"])
    lines = [
        "| heads pruned per layer | held-out ppl, gradient importance | "
        "held-out ppl, random (mean ± sd over %d seeds) | attention ms, "
        "2 layers (%s, median) | time pruned / unpruned (heads kept) | "
        "time saved / heads removed (by CPU time) | weight KiB per layer | "
        "libmha memory "
        "KiB: weights / during eval |" % (n_seeds, res["device"]),
        "|---|---|---|---|---|---|---|---|"]
    rows = [(0, res["unpruned"], [res["unpruned"]])]
    rows += [(k, r["importance"], r["random"]) for k, r in res["k"].items()]
    for k, imp, rand in rows:
        rp = [math.exp(x["loss"]) for x in rand]
        before, after = sum(imp["ms_before"]), sum(imp["ms_after"])
        saved_cpu = 1 - sum(imp["cpu_ms_after"]) / sum(imp["cpu_ms_before"])
        lines.append(
            "| %d | %.3f | %s | %.1f -> %.1f | %.2f (%.2f) | %s | %.0f | "
            "%.0f / %.0f |" % (
                k, math.exp(imp["loss"]),
                "%.3f ± %.3f" % (np.mean(rp), np.std(rp)) if k else "-",
                before, after, after / before, (H - k) / H,
                "%.2f (%.2f)" % ((1 - after / before) / (k / H),
                                 saved_cpu / (k / H)) if k else "-",
                imp["weight_bytes"][0] / 1024, imp["memory_pruned"] / 1024,
                imp["memory_eval"] / 1024))
    return "\n".join(lines)


def export_inputs(model, x, y, vocab, out_dir):
    """Writes what mha-heads needs to analyse layer i on these windows:
    layers.i.input.npy (its attention's input, the ln1 output, [N, T, E]),
    layers.i.grad.npy (dL/dY of its attention output for the windows' mean
    loss, [N, T, E]) and tokens.b.txt (window b's characters, one a line,
    as mha-heads --tokens reads them)."""
    os.makedirs(out_dir, exist_ok=True)
    seen = {"input": [], "output": []}

    def keep_output(module, args, out):
        out[0].retain_grad()
        seen["output"].append(out[0])

    hooks = []
    for b in model.layers:
        hooks.append(b.ln1.register_forward_hook(
            lambda m, i, o: seen["input"].append(o.detach())))
        hooks.append(b.self_attn.register_forward_hook(keep_output))
    nll_t = F.cross_entropy(model(x).transpose(1, 2), y)
    nll_t.backward()
    for hk in hooks:
        hk.remove()
    for i, (a, o) in enumerate(zip(seen["input"], seen["output"])):
        np.save(os.path.join(out_dir, "layers.%d.input.npy" % i), a.numpy())
        np.save(os.path.join(out_dir, "layers.%d.grad.npy" % i),
                o.grad.numpy())
    shown = {"\n": "\\n", "\t": "\\t", " ": "\u2423", "\0": "\ufffd"}
    for b, row in enumerate(x.tolist()):
        with open(os.path.join(out_dir, "tokens.%d.txt" % b), "w",
                  encoding="utf-8") as f:
            f.write("".join(shown.get(vocab[c], vocab[c]) + "\n"
                            for c in row))
    model.zero_grad(set_to_none=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default=None,
                    help="comma-separated specs for the parity check "
                         "(default: every device libmha finds)")
    ap.add_argument("--prune-device", default="cpu")
    ap.add_argument("--ks", default="1,2,4,6")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=41)
    ap.add_argument("--time-windows", type=int, default=16,
                    help="held-out windows in each timed forward")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--chars", type=int, default=1024)
    ap.add_argument("--export-inputs", metavar="DIR",
                    help="write each layer's attention input and upstream "
                         "gradient on --windows held-out windows as .npy "
                         "(for mha-heads), then stop")
    ap.add_argument("--windows", type=int, default=4)
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

    if args.export_inputs:
        x, y = evalset
        export_inputs(model, x[:args.windows], y[:args.windows], vocab,
                      args.export_inputs)
        return 0
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
                     args.prune_device, ks, args.seeds, args.reps,
                     args.time_windows)
    res["parity"] = rows
    runs = [res["unpruned"]] + [r for v in res["k"].values()
                                for r in [v["importance"]] + v["random"]]
    worst = max(abs(math.exp(r["loss"] - r["loss_gated_reference"]) - 1)
                for r in runs)
    res["pruned_vs_gated_max_rel"] = worst
    table = markdown(res, config["num_heads"])
    print(table)
    print("pruned libmha vs PyTorch with those heads gated to 0: perplexity "
          "differs by at most %.1e relative" % worst)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0 if worst <= PARITY_RTOL else 1


if __name__ == "__main__":
    sys.exit(main())
