"""fixture_gen.py: what the PyTorch fixture generators (tests/gen_*_fixtures.py)
share: PyTorch or a clear exit, the safetensors writer of tools/, and their
command line (--seed, --out, the folder made).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tools"))
from export_safetensors import write_safetensors  # noqa: E402,F401


def need_torch(script):
    """PyTorch, or exit saying how to get it (the first python3 on PATH may
    not be Debian's)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        sys.exit(f"{script} needs PyTorch: run it with /usr/bin/python3 "
                 "(Debian python3-torch)")
    return torch


def parse_args(doc, default_out, default_seed):
    """--seed and --out, with the output folder created."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--seed", type=int, default=default_seed)
    ap.add_argument("--out", default=default_out)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    return args
