#!/usr/bin/python3
"""torch_peer.py: the PyTorch row of mha-bench. Times
torch.nn.MultiheadAttention (eval, CPU, need_weights=False) for each case
given as E,H,B,L,S,KDIM,VDIM,CAUSAL,DTYPE and prints one JSON line per case:
{"case": i, "median_ms", "p95_ms", "first_ms", "runs", "torch"}, or
{"error": "..."} once when torch cannot be imported. mha-bench runs it with
popen; it can also be run by hand. With --data-dir DIR, case i reads its
inputs and weights from DIR/in<i>.f32 (raw little-endian float32: q (L,B,E),
k (S,B,KDIM), v (S,B,VDIM), w_q [E,E], w_k [E,KDIM], w_v [E,VDIM],
b_in [3E], w_o [E,E], b_o [E], as mha-bench's bench_case_data) and writes
its first output to DIR/out<i>.f32 (float32, like q), so mha-bench checks
it against the reference; without it the data is torch's own random.
With --backward, each timed run is a training forward plus autograd's
backward (input and weight gradients, from a fixed random dY) instead."""
import argparse
import json
import math
import sys
import time


def train_step(torch, m, q, k, v, mask):
    """A training forward plus its backward from a fixed dY, as one call
    that returns the output (gradients dropped before each)."""
    m.train()
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    dy = torch.rand(q.shape[0], q.shape[1], m.embed_dim, dtype=q.dtype)

    def step():
        m.zero_grad(set_to_none=True)
        for t in (q, k, v):
            t.grad = None
        out = m(q, k, v, need_weights=False, attn_mask=mask)[0]
        out.backward(dy)
        return out.detach()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure is "no peer"
        print(json.dumps({"error": "torch not importable: %s" % e}), flush=True)
        return 0
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for i, spec in enumerate(a.cases):
        e, h, b, l, s, kd, vd, causal, dt = spec.split(",")
        e, h, b, l, s, kd, vd, causal = map(int, (e, h, b, l, s, kd, vd, causal))
        dtype = torch.float16 if dt == "f16" else torch.float32
        try:
            t0 = time.perf_counter()
            m = torch.nn.MultiheadAttention(e, h, kdim=kd, vdim=vd).eval()
            path = None
            if a.data_dir:
                path = "%s/in%d.f32" % (a.data_dir, i)
                with open(path, "rb") as f:
                    flat = torch.frombuffer(bytearray(f.read()),
                                            dtype=torch.float32)
                sizes = [l * b * e, s * b * kd, s * b * vd, e * e, e * kd,
                         e * vd, 3 * e, e * e, e]
                parts = list(torch.split(flat, sizes))
                q = parts[0].reshape(l, b, e)
                k = parts[1].reshape(s, b, kd)
                v = parts[2].reshape(s, b, vd)
                wq, wk, wv = (parts[3].reshape(e, e), parts[4].reshape(e, kd),
                              parts[5].reshape(e, vd))
                with torch.no_grad():
                    if m._qkv_same_embed_dim:
                        m.in_proj_weight.copy_(torch.cat([wq, wk, wv]))
                    else:
                        m.q_proj_weight.copy_(wq)
                        m.k_proj_weight.copy_(wk)
                        m.v_proj_weight.copy_(wv)
                    m.in_proj_bias.copy_(parts[6])
                    m.out_proj.weight.copy_(parts[7].reshape(e, e))
                    m.out_proj.bias.copy_(parts[8])
                q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            else:
                q = torch.rand(l, b, e, dtype=dtype) * 2 - 1
                k = torch.rand(s, b, kd, dtype=dtype) * 2 - 1
                v = torch.rand(s, b, vd, dtype=dtype) * 2 - 1
            m = m.to(dtype)
            mask = None
            if causal:
                mask = torch.triu(torch.ones(l, s, dtype=torch.bool), 1)

            def fwd():
                with torch.inference_mode():
                    # attn_mask only: is_causal needs torch >= 2.0
                    return m(q, k, v, need_weights=False, attn_mask=mask)[0]
            if a.backward:
                fwd = train_step(torch, m, q, k, v, mask)
            out = fwd()
            first = (time.perf_counter() - t0) * 1e3
            if path:
                with open("%s/out%d.f32" % (a.data_dir, i), "wb") as f:
                    f.write(out.float().contiguous().numpy().tobytes())
            for _ in range(a.warmup):
                fwd()
            times = []
            start = time.perf_counter()
            while len(times) < a.repeat or time.perf_counter() - start < a.min_time:
                s0 = time.perf_counter()
                fwd()
                times.append((time.perf_counter() - s0) * 1e3)
            times.sort()
            n = len(times)
            med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
            p95 = times[max(0, math.ceil(0.95 * n) - 1)]
            print(json.dumps({"case": i, "median_ms": med, "p95_ms": p95,
                              "first_ms": first, "runs": n,
                              "torch": torch.__version__}), flush=True)
        except Exception as ex:  # noqa: BLE001 - reported per case
            print(json.dumps({"case": i, "error": str(ex)[:150]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
