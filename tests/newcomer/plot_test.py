#!/usr/bin/python3
"""plot_test.py PLOT_PY REPORT_A REPORT_B: bench/plot.py on two mha-bench
reports copied to a/run.json and b/run.json of a temporary folder (the case
that used to merge them): two runs with distinct labels, one colour per
device in both, peers in greys after libmha's devices, a log axis chosen
for values 100x apart, and a PNG written."""
import importlib.util
import os
import shutil
import sys
import tempfile


def main(plot_py, report_a, report_b):
    spec = importlib.util.spec_from_file_location("plot", plot_py)
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for sub, src in (("a", report_a), ("b", report_b)):
            os.mkdir(os.path.join(tmp, sub))
            paths.append(os.path.join(tmp, sub, "run.json"))
            shutil.copy(src, paths[-1])
        cases, runs, rows = plot.load(paths)
        assert runs == ["a/run", "b/run"], runs
        assert cases, "no timed rows"
        devices = {d for d, _ in rows}
        for d in devices:
            assert (d, "a/run") in rows and (d, "b/run") in rows, d
        order, peer = plot.device_order(rows)
        assert order[0] == "cpu:0", order
        assert [peer[d] for d in order] == sorted(peer[d] for d in order), \
            "peers not after libmha's devices: %s" % order
        for d in order:
            c = plot.device_colour(d, peer[d])
            r, g, b = (int(c[i:i + 2], 16) for i in (1, 3, 5))
            assert (r == g == b) == peer[d], "%s: colour %s" % (d, c)
        assert len({plot.device_colour(d, peer[d]) for d in order}) == \
            len(order), "two devices share a colour"
        assert plot.choose_log([1.0, 150.0], "auto")
        assert not plot.choose_log([50.0, 150.0], "auto")
        assert not plot.choose_log([1.0, 150.0], "linear")
        png = os.path.join(tmp, "chart.png")
        assert plot.main(paths + ["-o", png]) == 0
        with open(png, "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n", head
        assert os.path.getsize(png) > 10000, os.path.getsize(png)
    print("plot.py: two runs, %d devices, %d cases drawn" %
          (len(order), len(cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
