#!/usr/bin/python3
"""plot.py: turns one or more mha-bench JSON reports into a bar chart of
GFLOP/s per case, one bar per device (and per file when several are given),
written as PNG or SVG by the output's extension.

    /usr/bin/python3 bench/plot.py run.json [other.json ...] -o gflops.png [--log]

Needs matplotlib (Debian: python3-matplotlib). Rows without a time (skip,
error) are left out; FAIL rows are drawn hatched."""
import argparse
import json
import os
import sys


def load(paths):
    series = {}  # label -> {case: (gflops, status)}
    cases = []
    for path in paths:
        try:
            with open(path) as f:
                rep = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit("plot.py: %s: %s" % (path, e))
        if not isinstance(rep, dict) or "results" not in rep:
            sys.exit("plot.py: %s is not an mha-bench report" % path)
        tag = os.path.splitext(os.path.basename(path))[0]
        for r in rep["results"]:
            g = r.get("gflops")
            if not g:
                continue
            name = r["case"]["name"]
            if name not in cases:
                cases.append(name)
            label = r["device"] if len(paths) == 1 else "%s (%s)" % (r["device"], tag)
            series.setdefault(label, {})[name] = (g, r.get("status", "ok"))
    return cases, series


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="mha-bench --json files")
    ap.add_argument("-o", "--output", default="mha-bench.png",
                    help="PNG or SVG file (default mha-bench.png)")
    ap.add_argument("--log", action="store_true", help="logarithmic GFLOP/s axis")
    ap.add_argument("--title", default="mha-bench: GFLOP/s per case and device")
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot.py: needs matplotlib (apt-get install python3-matplotlib)")
    cases, series = load(a.reports)
    if not cases:
        sys.exit("plot.py: no timed rows in %s" % ", ".join(a.reports))
    n = len(series)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases) * max(1, n / 3)), 4.5))
    for i, (label, rows) in enumerate(sorted(series.items())):
        xs, ys, hatch = [], [], []
        for j, c in enumerate(cases):
            if c in rows:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(rows[c][0])
                hatch.append("//" if rows[c][1] == "FAIL" else "")
        bars = ax.bar(xs, ys, width, label=label)
        for b, h in zip(bars, hatch):
            b.set_hatch(h)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("GFLOP/s")
    if a.log:
        ax.set_yscale("log")
    ax.set_title(a.title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.output)
    print("plot.py: wrote %s" % a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
