#!/usr/bin/python3
"""train_charlm.py: trains the small character-level language model that
libmha's head analysis is shown on (issue 15), because random weights have no
heads worth analysing.

The model is the textbook pre-norm transformer decoder built from
torch.nn.MultiheadAttention layers (embed_dim 256, 8 heads, 2 layers, causal
self-attention, AdamW with a linear warm-up and cosine decay). The corpus is
Vim's help files, /usr/share/vim/vim90/doc/*.txt from Debian 12's
`vim-runtime` package (9.0.1378; License: OPL-1+, no options exercised, which
allows redistributing parts with the licence notice). usr_05.txt is held out
of training; a 16 KiB excerpt of it is written as the evaluation text
(eval_heads.py scores the heads on its first half and measures perplexity on
its second).

    nice /usr/bin/python3 examples/heads/train_charlm.py [--steps N]

writes, next to this script, charlm.safetensors (float32 state_dict; the
attention of layer i is under the prefix "layers.i.self_attn.", the
vocabulary and config in the metadata), heldout.txt and its licence note
heldout.LICENSE. Seeded (torch and NumPy), single process: a rerun with the
same torch build and thread count should give the same weights (the
committed ones took 48 minutes on 2 loaded cores, so that was not rerun).
"""
import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
from export_safetensors import write_safetensors  # noqa: E402

CORPUS_GLOB = "/usr/share/vim/vim90/doc/*.txt"
HELDOUT_FILE = "usr_05.txt"
HELDOUT_CHARS = 16384
LICENCE_NOTE = ("Excerpt of Vim's help file usr_05.txt (Debian package "
                "vim-runtime), Copyright 1988-2003 Bram Moolenaar, distributed "
                "under the Open Publication License v1.0 or later "
                "(http://www.opencontent.org/openpub/), no options exercised.")
CONFIG = dict(embed_dim=256, num_heads=8, num_layers=2, ffn_dim=1024,
              context=128, vocab_min_count=20)


class Block(nn.Module):
    """Pre-norm decoder block: causal self-attention, then a GELU MLP."""

    def __init__(self, e, h, ffn):
        super().__init__()
        self.ln1 = nn.LayerNorm(e)
        self.self_attn = nn.MultiheadAttention(e, h, batch_first=True)
        self.ln2 = nn.LayerNorm(e)
        self.ff = nn.Sequential(nn.Linear(e, ffn), nn.GELU(), nn.Linear(ffn, e))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.self_attn(h, h, h, attn_mask=mask,
                               need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class CharLM(nn.Module):
    def __init__(self, vocab, embed_dim, num_heads, num_layers, ffn_dim,
                 context, **_):
        super().__init__()
        self.tok = nn.Embedding(vocab, embed_dim)
        self.pos = nn.Embedding(context, embed_dim)
        self.layers = nn.ModuleList(Block(embed_dim, num_heads, ffn_dim)
                                    for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        for block in self.layers:
            x = block(x, mask)
        return self.head(self.ln_f(x))


def build_vocab(text, min_count):
    """Characters seen at least min_count times; index 0 stands for the rest."""
    counts = {}
    for c in text:
        counts[c] = counts.get(c, 0) + 1
    return "\0" + "".join(sorted(c for c, n in counts.items()
                                 if n >= min_count and c != "\0"))


def encode(text, vocab):
    index = {c: i for i, c in enumerate(vocab)}
    return np.array([index.get(c, 0) for c in text], dtype=np.int64)


def load_model(path):
    """The model and vocabulary saved by this script (for eval_heads.py)."""
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        blob = f.read()
    meta = header.pop("__metadata__")
    config = json.loads(meta["config"])
    vocab = json.loads(meta["vocab"])
    model = CharLM(len(vocab), **config)
    sd = {}
    for name, ent in header.items():
        a, b = ent["data_offsets"]
        sd[name] = torch.from_numpy(np.frombuffer(blob[a:b], dtype="<f4")
                                    .reshape(ent["shape"]).copy())
    model.load_state_dict(sd)
    return model.eval(), vocab, config


def windows_loss(model, ids, context):
    """Mean next-character NLL over non-overlapping windows of ids."""
    n = (len(ids) - 1) // context
    x = torch.from_numpy(ids[:n * context].reshape(n, context))
    y = torch.from_numpy(ids[1:n * context + 1].reshape(n, context))
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                 y.reshape(-1)))


def lr_at(step, steps, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    files = sorted(glob.glob(CORPUS_GLOB))
    if not files:
        sys.exit("train_charlm.py: no %s; apt-get install vim-runtime"
                 % CORPUS_GLOB)
    read = {os.path.basename(p): open(p, encoding="utf-8",
                                      errors="replace").read() for p in files}
    heldout_full = read.pop(HELDOUT_FILE)
    train_text = "".join(read[k] for k in sorted(read))
    vocab = build_vocab(train_text, CONFIG["vocab_min_count"])
    train_ids = encode(train_text, vocab)
    start = heldout_full.index("\n\n") + 2      # past the file's header line
    heldout = heldout_full[start:start + HELDOUT_CHARS]
    heldout_ids = encode(heldout, vocab)

    ctx = CONFIG["context"]
    model = CharLM(len(vocab), **CONFIG)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    print("corpus: %d files, %d chars; vocab %d; held out %s (%d chars); "
          "params %d" % (len(files) - 1, len(train_ids), len(vocab),
                         HELDOUT_FILE, len(heldout_ids),
                         sum(p.numel() for p in model.parameters())),
          flush=True)
    t0 = time.time()
    recent = []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        starts = rng.integers(0, len(train_ids) - ctx - 1, args.batch)
        x = torch.from_numpy(np.stack([train_ids[s:s + ctx] for s in starts]))
        y = torch.from_numpy(np.stack([train_ids[s + 1:s + ctx + 1]
                                       for s in starts]))
        model.train()
        loss = F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [float(loss)])[-50:]
        if step % 100 == 0 or step == args.steps - 1:
            print("step %5d  loss %.4f  %.0fs" % (step, np.mean(recent),
                                                  time.time() - t0), flush=True)
    train_s = time.time() - t0
    model.eval()
    heldout_loss = windows_loss(model, heldout_ids, ctx)
    summary = dict(steps=args.steps, batch=args.batch, lr=args.lr,
                   warmup=args.warmup, seed=args.seed, threads=args.threads,
                   train_seconds=round(train_s, 1),
                   train_loss_last50=round(float(np.mean(recent)), 4),
                   heldout_loss=round(heldout_loss, 4),
                   heldout_ppl=round(math.exp(heldout_loss), 3),
                   torch=torch.__version__)
    print(json.dumps(summary), flush=True)

    tensors = [(n, "F32", t.detach().numpy())
               for n, t in model.state_dict().items()]
    meta = {"config": json.dumps(CONFIG), "vocab": json.dumps(vocab),
            "corpus": "vim-runtime " + CORPUS_GLOB + " without " + HELDOUT_FILE,
            "training": json.dumps(summary)}
    write_safetensors(os.path.join(args.out, "charlm.safetensors"), tensors,
                      meta)
    with open(os.path.join(args.out, "heldout.txt"), "w",
              encoding="utf-8") as f:
        f.write(heldout)
    with open(os.path.join(args.out, "heldout.LICENSE"), "w") as f:
        f.write(LICENCE_NOTE + "\n")


if __name__ == "__main__":
    main()
