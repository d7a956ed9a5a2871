#!/usr/bin/env python3
"""python_overhead.py: what the Python package adds to one small forward.

Times, in one run on one layer, the same forward four ways: the bare C call
(mha_layer_forward_host through ctypes with its argument struct built once:
the C work plus ctypes' own call cost of about a microsecond),
libmha.MultiheadAttention on NumPy arrays, on torch tensors, and on
libmha.Tensor inputs (device-resident, outputs left on the device), and
prints the median and p95 in microseconds and each one's overhead over the
bare call. A benchmark, not a test: nothing is asserted.

  MHA_LIBRARY=build/libmha.so PYTHONPATH=python \\
      /usr/bin/python3 bench/python_overhead.py [--device cpu] [--threads 1]
"""
import argparse
import ctypes
import time

import numpy as np

import libmha
from libmha import _capi


def timed(fn, repeat):
    """Median and p95 of fn's wall time, microseconds, after a warm-up."""
    for _ in range(repeat // 10 + 1):
        fn()
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        times[i] = time.perf_counter_ns() - t0
    return np.median(times) / 1e3, np.percentile(times, 95) / 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU backend worker threads (0: one per core)")
    p.add_argument("--repeat", type=int, default=3000)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--length", type=int, default=16)
    a = p.parse_args()
    E, L = a.embed_dim, a.length
    gen = np.random.default_rng(0)
    device = libmha.Device(a.device, threads=a.threads)
    layer = libmha.MultiheadAttention(E, a.heads, batch_first=True,
                                      device=device)
    layer.load_state_dict({
        "in_proj_weight": gen.standard_normal((3 * E, E)) * 0.1,
        "in_proj_bias": np.zeros(3 * E), "out_proj.bias": np.zeros(E),
        "out_proj.weight": gen.standard_normal((E, E)) * 0.1})
    x = gen.standard_normal((1, L, E)).astype(np.float32)
    out = np.empty_like(x)

    # the bare C call: mha_host_forward_args built once
    lib = _capi.lib()
    args = _capi.HostForwardArgs()
    lib.mha_host_forward_args_init_sized(ctypes.byref(args),
                                         ctypes.sizeof(args))
    for arr in (args.query, args.key, args.value):
        arr.data, arr.dtype, arr.ndim = x.ctypes.data, _capi.F32, 3
        arr.shape[:3] = x.shape
    args.output, args.output_count = out.ctypes.data, out.size
    ptr, args_ref = layer._ptr, ctypes.byref(args)

    def bare():
        if lib.mha_layer_forward_host(ptr, args_ref):
            raise RuntimeError(lib.mha_context_errmsg(layer.device._ctx))

    rows = [("C call (ctypes, args prebuilt)", bare),
            ("MultiheadAttention, NumPy",
             lambda: layer(x, x, x, need_weights=False))]
    try:
        import torch
        xt = torch.from_numpy(x)
        rows.append(("MultiheadAttention, torch tensors",
                     lambda: layer(xt, xt, xt, need_weights=False)))
    except ImportError:
        pass
    xd = libmha.Tensor(x, layer.device)

    def on_device():
        o, _ = layer(xd, xd, xd, need_weights=False)
        o.close()
    rows.append(("MultiheadAttention, libmha.Tensor", on_device))

    print("libmha %s on %s: E=%d, %d heads, N=1, L=S=%d, need_weights=False,"
          " %d calls each" % (libmha.version(), layer.device.spec, E, a.heads,
                              L, a.repeat))
    base = None
    for name, fn in rows:
        med, p95 = timed(fn, a.repeat)
        base = med if base is None else base
        print("  %-36s median %8.1f us  p95 %8.1f us  overhead %+7.1f us"
              % (name, med, p95, med - base))
    device.close()


if __name__ == "__main__":
    main()
