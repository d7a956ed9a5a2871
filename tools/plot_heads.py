#!/usr/bin/python3
"""plot_heads.py: pictures of an mha-heads JSON file (mha-heads --json):

  PREFIX_attention.{png,svg}   a grid of per-head attention heatmaps of the
                               input dumped with --dump-attention (query x
                               key, token labels from --tokens)
  PREFIX_importance.{png,svg}  a bar chart of head importance (gradient,
                               ablation and confidence side by side)
  PREFIX_redundancy.{png,svg}  the head x head Jensen-Shannon and output
                               cosine matrices as heatmaps

usage: plot_heads.py HEADS.json [--out PREFIX] [--title TEXT]
PREFIX defaults to the JSON path without .json. A picture whose data the
JSON lacks (no attention dump, no heads) is skipped with a note. Needs
matplotlib (Debian: python3-matplotlib); draws without a display (Agg).
"""
import argparse
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def save(fig, prefix, name):
    """Writes fig as PREFIX_name.png and .svg; returns the paths."""
    paths = []
    for ext in ("png", "svg"):
        path = f"{prefix}_{name}.{ext}"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def label_axes(ax, tokens, rows, cols):
    """Token labels on both axes when there are few enough to read."""
    if tokens and max(rows, cols) <= 64:
        ax.set_xticks(range(cols))
        ax.set_xticklabels([repr(t)[1:-1] for t in tokens[:cols]],
                           fontsize=6, rotation=90)
        ax.set_yticks(range(rows))
        ax.set_yticklabels([repr(t)[1:-1] for t in tokens[:rows]],
                           fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def attention_grid(doc, prefix, title):
    att = doc.get("attention")
    if not att:
        return []
    weights, tokens = att["weights"], att.get("tokens") or []
    heads = len(weights)
    cols = min(4, heads)
    rows = math.ceil(heads / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows),
                             squeeze=False)
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= heads:
            ax.axis("off")
            continue
        m = weights[h]
        ax.imshow(m, cmap="viridis", vmin=0.0, aspect="auto",
                  interpolation="nearest")
        label_axes(ax, tokens, len(m), len(m[0]) if m else 0)
        ax.set_title(f"head {h}", fontsize=9)
    fig.suptitle(f"{title}attention of input {att['input']}, item "
                 f"{att['item']} (query rows x keys)", y=1.02)
    return save(fig, prefix, "attention")


def importance_bars(doc, prefix, title):
    heads = doc.get("heads") or []
    if not heads:
        return []
    kinds = [k for k in ("gradient", "ablation", "confidence")
             if k != "gradient" or doc.get("gradient_items", 0) > 0]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(heads) * len(kinds)),
                                    3.2))
    width = 0.8 / len(kinds)
    for i, k in enumerate(kinds):
        vals = [h[k] for h in heads]
        top = max(vals) or 1.0
        ax.bar([h["head"] + (i - (len(kinds) - 1) / 2) * width
                for h in heads], [v / top for v in vals], width, label=k)
    ax.set_xticks([h["head"] for h in heads])
    ax.set_xlabel("head")
    ax.set_ylabel("importance (max = 1)")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}head importance over {doc.get('rows', 0)} rows")
    return save(fig, prefix, "importance")


def redundancy_maps(doc, prefix, title):
    red = doc.get("redundancy")
    if not red:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, name, cmap in ((axes[0], "js", "Jensen-Shannon (nats)",
                                 "magma_r"),
                                (axes[1], "cosine", "output cosine",
                                 "coolwarm")):
        m = red[key]
        im = ax.imshow(m, cmap=cmap, interpolation="nearest",
                       vmin=-1.0 if key == "cosine" else 0.0,
                       vmax=1.0 if key == "cosine" else None)
        ax.set_xticks(range(len(m)))
        ax.set_yticks(range(len(m)))
        ax.set_xlabel("head")
        ax.set_ylabel("head")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{title}head redundancy")
    return save(fig, prefix, "redundancy")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json")
    ap.add_argument("--out", help="prefix of the pictures")
    ap.add_argument("--title", default="", help="text before each title")
    a = ap.parse_args(argv)
    with open(a.json, encoding="utf-8") as f:
        doc = json.load(f)
    prefix = a.out or (a.json[:-5] if a.json.endswith(".json") else a.json)
    title = f"{a.title}: " if a.title else ""
    written = []
    for draw in (attention_grid, importance_bars, redundancy_maps):
        paths = draw(doc, prefix, title)
        if not paths:
            print(f"plot_heads: no data for {draw.__name__}", file=sys.stderr)
        written += paths
    for p in written:
        print(p)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
