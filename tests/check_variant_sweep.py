#!/usr/bin/env python3
"""check_variant_sweep.py: every kernel variant of every GPU device is
correct. `mha-tune --list` names each device's matmul and attention
variants (so a variant added to a backend's table is swept without an edit
here); run i forces variant i of each list (modulo its length) on every
backend at once through MHA_TUNE_VARIANT (a class may be named once per
backend) and runs test_ops' matmul and attention cases, which compare each
device against the scalar CPU reference. A forced name a backend does not
have would be logged and ignored: the log must not say so. Every case
must run: all of them, less the f16 ones where the limits of both devices
say fp16=0 (the small-device limits, tests/CMakeLists.txt), whose devices
decline them.

usage: check_variant_sweep.py MHA_TUNE TEST_OPS

CTest runs it as tune_variant_sweep. Under the small-device limits it runs
by hand only (it compiles every variant again: about 50 s with Mesa's
shader cache off), with MHA_VULKAN_LIMITS and MHA_OPENCL_LIMITS set as
MHA_SMALL_DEVICE_ENV in tests/CMakeLists.txt (see README, "Performance on
GPUs")."""
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


def expected_cases(env):
    """How many of CASES test_ops runs under env's device limits."""
    no_fp16 = all("fp16=0" in env.get(var, "").split(",")
                  for var in ("MHA_VULKAN_LIMITS", "MHA_OPENCL_LIMITS"))
    return sum(1 for name in CASES.split("|")
               if not (no_fp16 and "f16" in name))


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
        tested = "Tested: %d " % expected_cases(env)
        assert tested in text, "expected %s\n%s" % (tested, text[-2000:])
        print("ok", forced)


if __name__ == "__main__":
    main()
