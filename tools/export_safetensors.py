#!/usr/bin/python3
"""export_safetensors.py: saves a PyTorch checkpoint's tensors as a
.safetensors file that mha_layer_load_safetensors reads, for machines without
the `safetensors` package (Debian 12 does not ship it).

    /usr/bin/python3 tools/export_safetensors.py CHECKPOINT.pt OUT.safetensors

CHECKPOINT is a file saved with torch.save: a state_dict, or a module (its
state_dict is used). Every tensor keeps its state_dict key, so a whole
model's file works and libmha picks one layer with a prefix such as
"encoder.layers.3.self_attn.". Floating tensors are written as F32, bool as
BOOL; other dtypes are skipped with a note on stderr.
"""
import json
import os
import struct
import sys

import numpy as np

ST_DTYPES = {"F32": ("<f4", 4), "F64": ("<f8", 8), "BOOL": ("|u1", 1),
              "F16": ("<f2", 2), "U8": ("|u1", 1), "I64": ("<i8", 8)}


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype_str, np.ndarray) in file order."""
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs = []
    off = 0
    for name, dt, arr in tensors:
        npdt, _ = ST_DTYPES[dt]
        if dt == "BOOL":
            data = np.ascontiguousarray(arr, dtype=np.uint8)
            assert data.size == 0 or data.max() <= 1
        else:
            data = np.ascontiguousarray(arr, dtype=npdt)
        b = data.tobytes()
        header[name] = {"dtype": dt, "shape": [int(s) for s in arr.shape],
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)




def export(checkpoint, out):
    with open(checkpoint, "rb"):  # an unreadable input fails before torch loads
        pass
    import pickle
    import torch
    try:
        obj = torch.load(checkpoint, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{checkpoint}: not a torch.save file ({e})")
    state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    tensors = []
    for name, t in state.items():
        if not torch.is_tensor(t):
            continue
        if t.dtype.is_floating_point:
            tensors.append((name, "F32", t.detach().float().numpy()))
        elif t.dtype == torch.bool:
            tensors.append((name, "BOOL", t.numpy()))
        else:
            print(f"export_safetensors: skipping {name} ({t.dtype})",
                  file=sys.stderr)
    write_safetensors(out, tensors, {"format": "pt"})
    return len(tensors)


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) == 2 else 2
    try:
        n = export(argv[1], argv[2])
    except OSError as e:  # a missing input or unwritable output: one line
        print(f"export_safetensors.py: {e.filename or argv[1]}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"export_safetensors.py: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} tensors to {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
