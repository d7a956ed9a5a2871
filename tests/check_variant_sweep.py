#!/usr/bin/env python3
"""check_variant_sweep.py: every kernel variant of every GPU device is
correct. `mha-tune --list` names each device's matmul and attention
variants (so a variant added to a backend's table is swept without an edit
here); run i forces variant i of each list (modulo its length) on every
backend at once through MHA_TUNE_VARIANT (a class may be named once per
backend) and runs test_ops' matmul and attention cases, which compare each
device against the scalar CPU reference. A forced name a backend does not
have would be logged and ignored: the log must not say so.

usage: check_variant_sweep.py MHA_TUNE TEST_OPS"""
import os
import subprocess
import sys

# Each op a variant changes, f32 and f16, masks, causal row blocks and
# partial tiles; few enough that lavapipe and PoCL compile every variant's
# kernels in about a minute with their caches off.
CASES = ("projection_bias|projection_f16|scores_f16_masks|"
         "weighted_sum_row_blocks|attention_masks|attention_f16_causal")


def variants(tune):
    out = subprocess.run([tune, "--list"], capture_output=True, text=True,
                         check=True).stdout
    lists = {}
    for line in out.splitlines():
        spec, kind, *names = line.split()
        assert names, "%s lists no %s variants" % (spec, kind)
        lists.setdefault(kind, []).append(names)
    return lists


def main():
    tune, test_ops = sys.argv[1], sys.argv[2]
    lists = variants(tune)
    required = [b for b in os.environ.get("MHA_REQUIRE", "").split(",") if b]
    assert len(lists.get("matmul", [])) >= len(required), lists
    runs = max(len(n) for kind in lists.values() for n in kind)
    for i in range(runs):
        forced = ",".join("%s=%s" % (kind, names[i % len(names)])
                          for kind, per_dev in sorted(lists.items())
                          for names in per_dev)
        env = dict(os.environ, MHA_TUNE_VARIANT=forced, MHA_LOG="warn",
                   MHA_TEST_DEVICE="vulkan,opencl")
        run = subprocess.run([test_ops, "--jobs", "2",
                              "--filter", "ops/@(%s)" % CASES],
                             capture_output=True, text=True, env=env)
        text = run.stdout + run.stderr
        assert run.returncode == 0, "%s:\n%s" % (forced, text[-4000:])
        assert "MHA_TUNE_VARIANT" not in text, text[-2000:]
        assert "Tested: 6 " in text, text[-2000:]
        print("ok", forced)


if __name__ == "__main__":
    main()
