#!/usr/bin/python3
"""mha_info_json.py MHA_INFO: checks mha-info --json as a script reads it:
every device has features as an array of names and a spec that, given as
MHA_DEVICE, makes that device the default; the CPU backend's device names
its kernel sets (cpu_isa) with the best among them."""
import json
import os
import subprocess
import sys


def info(exe, device=None):
    env = dict(os.environ)
    env.pop("MHA_DEVICE", None)
    if device:
        env["MHA_DEVICE"] = device
    out = subprocess.run([exe, "--json"], env=env, check=True,
                         stdout=subprocess.PIPE).stdout
    return json.loads(out)


def main(exe):
    root = info(exe)
    devices = root["devices"]
    assert devices, "no devices listed"
    for d in devices:
        assert isinstance(d["features"], list), d["features"]
        assert all(isinstance(f, str) and f for f in d["features"]), d
        assert d["spec"] == "%s:%d" % (d["backend"], d["backend_index"]), d
        chosen = info(exe, d["spec"])
        assert chosen["default"] == d["index"], \
            "MHA_DEVICE=%s opened device %s, not %s" % (
                d["spec"], chosen["default"], d["index"])
        if d["backend"] == "cpu":
            isa = d["cpu_isa"]
            assert "scalar" in isa["available"], isa
            assert isa["best"] == isa["available"][0], isa
        else:
            assert "cpu_isa" not in d, d
    print("mha-info --json: %d device(s) checked" % len(devices))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
