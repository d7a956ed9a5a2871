"""The README's Python section runs as written: its ```python blocks, in
order, in one namespace (later blocks use earlier names), on the devices
they name."""
import os
import re

import pytest

import libmha

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def python_blocks():
    """The ```python blocks of README.md's "## Python" section."""
    with open(README) as f:
        text = f.read()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_section_runs(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 3
    specs = {d["spec"] for d in libmha.devices()}
    named = set(re.findall(r'"((?:cpu|vulkan|opencl):\d+)"', "".join(blocks)))
    if not named <= specs:
        pytest.skip("the README names %s; this build has %s"
                    % (sorted(named - specs), sorted(specs)))
    scope = {}
    for block in blocks:
        exec(compile(block, README, "exec"), scope)
    printed = capsys.readouterr().out.split("\n")
    assert printed[0] == "(2, 10, 64) float32"
    assert float(printed[1]) < 1e-4
    assert scope["out"].shape == (2, 10, 64)
    assert scope["weights"].shape == (2, 10, 10)
    assert scope["o"].shape == (1, 12, 8, 32)
    assert scope["y"].shape == (1, 10, 256)
    assert scope["cache"].length(0) == 10
    losses = scope["losses"]
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0], losses
    assert scope["grads"]["out_proj.weight"].shape == (64, 64)
    assert scope["trained"]["in_proj_weight"].shape == (192, 64)
