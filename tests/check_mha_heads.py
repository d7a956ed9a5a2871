#!/usr/bin/python3
"""check_mha_heads.py: the mha-heads CTest: runs the tool on a tiny random
layer (statistics with random gradients and an attention dump, then prune
by gradient and random for k = 1, 2) and validates its JSON and CSV: every
key the README promises, shapes H and H x H, probabilities' rows summing to
1, gradient importance of l2 norm 1, prune rows for every criterion and k
with fewer weight bytes than the unpruned layer; an input whose shape's
element count wraps is refused. Then, when matplotlib is
installed, tools/plot_heads.py must write its six pictures. Given the
trained model of examples/heads, the tool runs on it on cpu, vulkan and
opencl, and every device gives the same per-head statistics.

    check_mha_heads.py MHA_HEADS_BINARY PLOT_SCRIPT WORK_DIR [CHARLM]
"""
import csv
import json
import math
import os
import struct
import subprocess
import sys


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n"
                 f"{r.stderr}")
    return r.stdout


def check(cond, what):
    if not cond:
        sys.exit(f"check_mha_heads: {what}")


def check_stats(doc, H, L):
    for key in ("tool", "version", "device", "layer", "inputs", "rows",
                "gradient_items", "heads", "redundancy", "attention"):
        check(key in doc, f"JSON lacks {key}")
    heads = doc["heads"]
    check(len(heads) == H, f"{len(heads)} heads, expected {H}")
    for h in heads:
        for k in ("head", "entropy", "confidence", "distance", "first_key",
                  "prev_token", "ablation", "gradient", "gradient_raw"):
            check(k in h and math.isfinite(h[k]), f"head lacks {k}")
        check(0 < h["confidence"] <= 1, "confidence outside (0, 1]")
        check(0 <= h["entropy"] <= math.log(L) + 1e-6, "entropy > ln S")
        check(h["ablation"] > 0, "ablation is 0")
    norm = math.sqrt(sum(h["gradient"] ** 2 for h in heads))
    check(abs(norm - 1) < 1e-6, f"gradient importance has norm {norm}")
    for kind in ("js", "cosine"):
        m = doc["redundancy"][kind]
        check(len(m) == H and all(len(r) == H for r in m), f"{kind} not HxH")
    check(all(abs(doc["redundancy"]["cosine"][h][h] - 1) < 1e-6
              for h in range(H)), "cosine diagonal is not 1")
    att = doc["attention"]["weights"]
    check(len(att) == H and len(att[0]) == L, "attention not [H][L][S]")
    for row in att[1]:
        check(abs(sum(row) - 1) < 1e-4, "an attention row does not sum to 1")
    check(doc["attention"]["tokens"][:2] == ["a", "b c"], "token labels")


STATS = ("entropy", "confidence", "distance", "first_key", "prev_token",
         "ablation")


def check_trained_model(tool, model, work):
    """Layer 0 of the committed character LM on every device: its previous-
    token head only shows with trained weights, and the devices must agree."""
    docs = {}
    for device in ("cpu", "vulkan", "opencl"):
        js = os.path.join(work, f"charlm_{device}.json")
        run([tool, "--embed-dim", "256", "--heads", "8", "--batch-first",
             "--causal", "--weights", model, "--prefix", "layers.0.self_attn.",
             "--random", "1", "--batch", "1", "--tgt-len", "32",
             "--device", device, "--json", js])
        with open(js, encoding="utf-8") as f:
            docs[device] = json.load(f)
        check(len(docs[device]["heads"]) == 8, f"{device}: not 8 heads")
    for device, doc in docs.items():
        for ref, got in zip(docs["cpu"]["heads"], doc["heads"]):
            for k in STATS:
                check(abs(ref[k] - got[k]) <= 1e-4 * max(1, abs(ref[k])),
                      f"{device} head {got['head']} {k}: {got[k]} vs cpu "
                      f"{ref[k]}")


def write_npy(path, shape, data_bytes):
    """An f4 .npy whose header claims shape, followed by data_bytes zeros."""
    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % (shape,)
    hdr += " " * ((64 - (10 + len(hdr) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) +
                hdr.encode() + bytes(data_bytes))


def check_wrapping_shapes_refused(tool, work):
    """A shape whose element count wraps size_t (2^62 x 4; 4 x (2^62 + 1),
    whose product wraps to 4) is refused by the reader itself, not read
    as the few elements the wrapped count says."""
    for i, shape in enumerate([(1 << 62, 4), (4, (1 << 62) + 1)]):
        path = os.path.join(work, f"wrap{i}.npy")
        write_npy(path, shape, 16)
        r = subprocess.run([tool, "--embed-dim", "4", "--heads", "1",
                            "--input", path, "--device", "cpu"],
                           capture_output=True, text=True)
        check(r.returncode != 0 and
              "more elements than memory can hold" in r.stderr,
              f"shape {shape}: rc {r.returncode}, {r.stderr.strip()}")


def main():
    tool, plot, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    H, L = 4, 6
    tokens = os.path.join(work, "tokens.txt")
    with open(tokens, "w", encoding="utf-8") as f:
        f.write("a\nb c\n" + "".join(f"t{i}\n" for i in range(L)))
    layer = ["--embed-dim", "16", "--heads", str(H), "--batch", "2",
             "--tgt-len", str(L), "--random", "2", "--grad", "random",
             "--device", "cpu"]
    js, cs = os.path.join(work, "heads.json"), os.path.join(work, "heads.csv")
    out = run([tool] + layer + ["--json", js, "--csv", cs,
                                "--dump-attention", "1", "--tokens", tokens])
    check("entropy" in out and "gradient" in out, "no table on stdout")
    with open(js, encoding="utf-8") as f:
        check_stats(json.load(f), H, L)
    with open(cs, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    check(len(rows) == H and "ablation" in rows[0], "CSV rows")
    pj = os.path.join(work, "prune.json")
    run([tool, "prune"] + layer + ["--criterion", "gradient,random", "--k",
                                   "1,2", "--repeat", "3", "--json", pj])
    with open(pj, encoding="utf-8") as f:
        prune = json.load(f)["prune"]
    check(len(prune) == 5, f"{len(prune)} prune rows, expected 5")
    base = prune[0]
    check(base["k"] == 0 and base["output_change"] == 0, "baseline row")
    for r in prune[1:]:
        check(len(r["pruned"]) == r["k"], "pruned list length")
        check(r["weight_bytes"] < base["weight_bytes"], "weights not smaller")
        check(r["output_change"] > 0, "pruning changed nothing")
    check_wrapping_shapes_refused(tool, work)
    if len(sys.argv) > 4:
        check_trained_model(tool, sys.argv[4], work)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib missing: plot_heads.py not run")
        return 0
    prefix = os.path.join(work, "pics")
    run(["/usr/bin/python3", plot, js, "--out", prefix, "--title", "test"])
    for name in ("attention", "importance", "redundancy"):
        for ext in ("png", "svg"):
            p = f"{prefix}_{name}.{ext}"
            check(os.path.getsize(p) > 1000, f"{p} missing or empty")
    return 0


if __name__ == "__main__":
    sys.exit(main())
