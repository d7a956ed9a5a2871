#!/usr/bin/env python3
"""check_bench_profile.py: mha-bench --profile on every device of the build
(cpu, and vulkan and opencl where found; MHA_REQUIRE names those that must
be): each libmha row has a profile whose per-node times are > 0, name the
graph's nodes, and sum to at most the profiled forward's wall time (the
device's timestamps lie inside the host's wall interval). Run twice: three
input tensors (three in_projection nodes), then --self-attention (one
qkv_projection: Q, K and V from one product over in_proj_weight). No timing
thresholds: only what holds on any machine.

usage: check_bench_profile.py MHA_BENCH JSON_OUT"""
import json
import os
import subprocess
import sys


def check(bench, out, self_attention):
    cmd = [bench, "--embed-dim", "64", "--heads", "4", "--batch", "2",
           "--tgt-len", "16", "--causal", "--warmup", "1", "--repeat", "3",
           "--min-time", "0", "--no-peers", "--profile", "--json", out]
    if self_attention:
        cmd.append("--self-attention")
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "profile custom on cpu:0" in run.stdout, run.stdout
    doc = json.load(open(out))
    seen = set()
    for row in doc["results"]:
        if row["backend"] not in ("cpu", "vulkan", "opencl"):
            continue
        assert row["status"] == "ok", row
        seen.add(row["backend"])
        prof = row["profile"]
        nodes = prof["nodes"]
        names = [n["node"] for n in nodes]
        first = "qkv_projection" if self_attention else "in_projection"
        assert names[0] == first and names[-1] == "out_projection", names
        assert names.count(first) == (1 if self_attention else 3), names
        assert row["case"]["self_attention"] == self_attention, row["case"]
        assert "attention" in names, names
        assert all(n["ms"] > 0 and n["variant"] for n in nodes), (row["device"], nodes)
        total = sum(n["ms"] for n in nodes)
        assert abs(total - prof["kernel_ms"]) < 1e-6 * max(1.0, total), prof
        assert total <= prof["wall_ms"], (row["device"], total, prof["wall_ms"])
        want = "host" if row["backend"] == "cpu" else "device"
        assert prof["clock"] == want, (row["device"], prof["clock"])
        assert row["gflops_needed"] < row["gflops"], row
    required = [b for b in os.environ.get("MHA_REQUIRE", "").split(",") if b]
    for b in ["cpu"] + required:
        assert b in seen, "no profiled %s row in %s" % (b, sorted(seen))
    print("profiled%s:" % (" self-attention" if self_attention else ""),
          ", ".join(sorted(seen)))


def main():
    for self_attention in (False, True):
        check(sys.argv[1], sys.argv[2], self_attention)


if __name__ == "__main__":
    main()
