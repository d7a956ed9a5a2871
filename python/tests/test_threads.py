"""Four threads, each with its own Device (its own libmha context) and
layer, run forwards at the same time (ctypes releases the GIL during each
call) and every result is the single-threaded one; threads sharing one
Device take turns on its lock and are correct too."""
import threading

import numpy as np
import torch

import libmha
from conftest import SPECS

E, H, L, N, ROUNDS = 16, 4, 8, 2, 25


def _case(seed):
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    x = torch.randn(N, L, E)
    with torch.no_grad():
        want = m(x, x, x, need_weights=False)[0].numpy()
    return m, x.numpy(), want


def _run_threads(layers, cases):
    barrier = threading.Barrier(len(layers))
    errors = []

    def work(i):
        try:
            _, x, want = cases[i]
            barrier.wait()
            for _ in range(ROUNDS):
                out, _ = layers[i](x, x, x, need_weights=False)
                np.testing.assert_allclose(out, want, atol=1e-4, rtol=0)
        except Exception as e:  # reported by the main thread
            errors.append("thread %d: %r" % (i, e))

    threads = [threading.Thread(target=work, args=(i,))
               for i in range(len(layers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_four_threads_own_contexts():
    # the devices in turn (cpu, vulkan:0, opencl:0, cpu), one context each
    specs = [SPECS[i % len(SPECS)] for i in range(4)]
    devices = [libmha.Device(s) for s in specs]
    cases = [_case(i) for i in range(4)]
    layers = [libmha.MultiheadAttention.from_torch(c[0], d)
              for c, d in zip(cases, devices)]
    try:
        _run_threads(layers, cases)
    finally:
        for d in devices:
            d.close()


def test_four_threads_one_device():
    device = libmha.Device("cpu")
    cases = [_case(10 + i) for i in range(4)]
    layers = [libmha.MultiheadAttention.from_torch(c[0], device)
              for c in cases]
    try:
        _run_threads(layers, cases)
    finally:
        device.close()
