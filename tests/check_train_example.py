#!/usr/bin/env python3
"""check_train_example.py: runs examples/train (example-train) on the CPU
for the steps of tests/fixtures/backward/train_example.safetensors, which
tests/gen_backward_fixtures.py wrote from the same steps in PyTorch float64,
and compares the student's final weights (what --save writes) with the
fixture's: max |libmha - torch| <= TOL (1e-5) for every weight. Standard
library only.

    check_train_example.py EXAMPLE FIXTURE WORKDIR
"""
import json
import os
import struct
import subprocess
import sys

TOL = 1e-5
SIZES = {"F32": ("f", 4), "F64": ("d", 8)}


def read_safetensors(path):
    """name -> (list of floats), metadata."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        code, size = SIZES[e["dtype"]]
        a, b = e["data_offsets"]
        data = blob[8 + n + a:8 + n + b]
        out[name] = struct.unpack("<%d%s" % (len(data) // size, code), data)
    return out, meta


def main():
    example, fixture, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    want, meta = read_safetensors(fixture)
    saved = os.path.join(work, "final.safetensors")
    cmd = [example, "--device", "cpu", "--steps", meta["steps"], "--lr",
           meta["lr"], "--warmup", meta["warmup"], "--every", "5",
           "--save", saved]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    got, _ = read_safetensors(saved)
    worst = 0.0
    for name, w in want.items():
        g = got[name[len("final."):]]
        assert len(g) == len(w), name
        err = max(abs(a - b) for a, b in zip(g, w))
        print("%-16s max |libmha - torch| %.3g" % (name[6:], err))
        worst = max(worst, err)
    if worst > TOL:
        sys.exit("final weights differ from PyTorch's by %.3g > %g"
                 % (worst, TOL))
    print("ok: final weights within %g of PyTorch's" % TOL)


if __name__ == "__main__":
    main()
