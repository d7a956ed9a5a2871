#!/usr/bin/python3
"""plot.py: turns one or more mha-bench JSON reports into a bar chart of
GFLOP/s per case, written as PNG or SVG by the output's extension.

    /usr/bin/python3 bench/plot.py run.json [other.json ...] -o gflops.png

One colour per device, the same in every file (cpu blue, vulkan red, opencl
green, lighter for a second device of a backend); the peers (OpenBLAS,
CLBlast, PyTorch) in greys with dashed edges, after libmha's devices. With
several files each file is a run, labelled by its path below the files'
common folder (a/run.json and b/run.json stay apart), and drawn with its
own hatch. The GFLOP/s axis is logarithmic when the values span more than
10x (--scale to choose). Rows without a time (skip, error) are left out;
FAIL rows are marked with a red "FAIL". The legend sits outside the plot.

Needs matplotlib (Debian: python3-matplotlib)."""
import argparse
import json
import os
import sys

# Base colour of each libmha backend; a device's index shades it lighter.
BACKEND_COLOURS = {"cpu": "#1f5fa8", "vulkan": "#c0392b", "opencl": "#2e8b3d"}
OTHER_COLOUR = "#8e44ad"
PEER_GREYS = {"openblas": "#5e5e5e", "torch": "#8f8f8f", "clblast": "#c4c4c4"}
RUN_HATCHES = ["", "//", "..", "xx", "\\\\", "oo", "--", "++"]


def run_labels(paths):
    """Each path relative to the files' common folder, without '.json'."""
    full = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in full])
    return [os.path.splitext(os.path.relpath(p, common))[0] for p in full]


def load(paths):
    """Returns (cases, runs, rows): case names in first-seen order, run
    labels, and {(device, run): {case: (gflops, status, is_peer)}}."""
    runs = run_labels(paths)
    cases, rows = [], {}
    for path, run in zip(paths, runs):
        try:
            with open(path) as f:
                rep = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit("plot.py: %s: %s" % (path, e))
        if not isinstance(rep, dict) or "results" not in rep:
            sys.exit("plot.py: %s is not an mha-bench report" % path)
        for r in rep["results"]:
            g = r.get("gflops")
            if not g:
                continue
            name = r["case"]["name"]
            if name not in cases:
                cases.append(name)
            peer = r.get("backend") == "peer"
            rows.setdefault((r["device"], run), {})[name] = (
                g, r.get("status", "ok"), peer)
    return cases, runs, rows


def _split(device):
    name, _, index = device.partition(":")
    return name, int(index) if index.isdigit() else 0


def _lighter(hex_colour, amount):
    rgb = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    rgb = [int(c + (255 - c) * amount) for c in rgb]
    return "#%02x%02x%02x" % tuple(rgb)


def device_colour(device, peer):
    """The device's colour, from its name alone, so it is the same in every
    chart: a backend's colour (grey for a peer), lighter per index."""
    name, index = _split(device)
    if peer:
        return _lighter(PEER_GREYS.get(name, "#999999"), min(0.15 * index, 0.6))
    return _lighter(BACKEND_COLOURS.get(name, OTHER_COLOUR),
                    min(0.3 * index, 0.7))


def device_order(rows):
    """libmha's devices first (cpu, vulkan, opencl, others), then peers."""
    backends = list(BACKEND_COLOURS)
    peer = {}
    for (d, _), data in rows.items():
        peer[d] = peer.get(d, False) or any(v[2] for v in data.values())

    def key(d):
        name, index = _split(d)
        rank = backends.index(name) if name in backends else len(backends)
        return (peer[d], rank, name, index)
    return sorted(peer, key=key), peer


def choose_log(values, scale):
    if scale != "auto":
        return scale == "log"
    return min(values) > 0 and max(values) / min(values) > 10


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="mha-bench --json files")
    ap.add_argument("-o", "--output", default="mha-bench.png",
                    help="PNG or SVG file (default mha-bench.png)")
    ap.add_argument("--scale", choices=("auto", "log", "linear"), default="auto",
                    help="GFLOP/s axis: log when values span > 10x (auto, "
                         "the default), or always log or linear")
    ap.add_argument("--log", action="store_const", dest="scale", const="log",
                    help="same as --scale log")
    ap.add_argument("--title", default="mha-bench: GFLOP/s per case and device")
    a = ap.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        sys.exit("plot.py: needs matplotlib (apt-get install python3-matplotlib)")
    cases, runs, rows = load(a.reports)
    if not cases:
        sys.exit("plot.py: no timed rows in %s" % ", ".join(a.reports))
    devices, peer = device_order(rows)
    series = [(d, r) for d in devices for r in runs if (d, r) in rows]
    # half a bar's gap between libmha's devices and the peers
    gap = 0.5 if any(peer[d] for d, _ in series) and not all(
        peer[d] for d, _ in series) else 0.0
    width = 0.84 / (len(series) + gap)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(cases) * max(1, len(series) / 4)), 4.8))
    values = []
    for i, (d, r) in enumerate(series):
        data = rows[(d, r)]
        slot = i + 0.5 + (gap if peer[d] else 0.0)
        xs = [j - 0.42 + width * slot for j, c in enumerate(cases) if c in data]
        ys = [data[c][0] for c in cases if c in data]
        values += ys
        bars = ax.bar(xs, ys, width, color=device_colour(d, peer[d]),
                      hatch=RUN_HATCHES[runs.index(r) % len(RUN_HATCHES)],
                      edgecolor="black", linewidth=0.6,
                      linestyle="--" if peer[d] else "-")
        for b, c in zip(bars, [c for c in cases if c in data]):
            if data[c][1] == "FAIL":
                ax.annotate("FAIL", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", color="red", fontsize=7,
                            rotation=90)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("GFLOP/s" + (" (log scale)" if choose_log(values, a.scale) else ""))
    if choose_log(values, a.scale):
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(a.title)
    handles = [Patch(facecolor=device_colour(d, peer[d]), edgecolor="black",
                     linestyle="--" if peer[d] else "-",
                     label=d + (" (peer)" if peer[d] else "")) for d in devices]
    if len(runs) > 1:
        handles += [Patch(facecolor="white", edgecolor="black",
                          hatch=RUN_HATCHES[k % len(RUN_HATCHES)], label="run: " + r)
                    for k, r in enumerate(runs)]
    ax.legend(handles=handles, fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.savefig(a.output, bbox_inches="tight", dpi=110)
    print("plot.py: wrote %s" % a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
