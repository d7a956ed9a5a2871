"""libmha.devices() gives what mha-info --json prints; Device opens by spec
and describes itself."""
import json
import os
import subprocess

import pytest

import libmha


def _mha_info():
    """mha-info beside the library under test (the build tree), if any."""
    path = os.path.join(os.path.dirname(libmha.library_path()), "mha-info")
    if not os.path.exists(path):
        pytest.skip("no mha-info beside %s" % libmha.library_path())
    return json.loads(subprocess.run([path, "--json"], check=True,
                                     capture_output=True, text=True).stdout)


def test_devices_match_mha_info():
    want = _mha_info()["devices"]
    got = libmha.devices()
    assert [d["spec"] for d in got] == [d["spec"] for d in want]
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w), g["spec"]
        # memory sizes may be sampled at probe time; the rest is fixed
        for key in w:
            if key not in ("memory_bytes", "max_buffer_bytes"):
                assert g[key] == w[key], (g["spec"], key)


def test_device_by_spec():
    for d in libmha.devices():
        with libmha.Device(d["spec"]) as dev:
            assert dev.spec == d["spec"]
            assert dev.info["name"] == d["name"]
            assert dev.fp16 == ("fp16-storage" in d["features"])
            used, peak = dev.memory_usage()
            assert 0 <= used <= peak
        assert dev.closed


def test_cpu_options():
    with libmha.Device("cpu", threads=1, cpu_isa="scalar") as dev:
        assert dev.info["backend"] == "cpu"
    with pytest.raises(libmha.Error, match="cpu_isa"):
        libmha.Device("cpu", cpu_isa="nosuch")
