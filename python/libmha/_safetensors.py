"""_safetensors: reads the .safetensors files libmha writes (F32 or F16
tensors) into NumPy, so MultiheadAttention.state_dict can hand weights
back from the device through mha_layer_save_safetensors."""
import json
import struct

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16}


def read(path):
    """name -> float32 NumPy array, for every tensor of the file at path
    (the "__metadata__" entry is skipped)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        data = np.frombuffer(blob[8 + n + a:8 + n + b], _DTYPES[e["dtype"]])
        out[name] = data.reshape(e["shape"]).astype(np.float32)
    return out
