"""setup.py: `pip install ./python` for the libmha package (pure Python over
the libmha shared library through ctypes, no compiled extension).

There is deliberately no pyproject.toml: without one, pip builds with the
setuptools and wheel already installed (Debian's python3-setuptools and
python3-wheel) instead of fetching them into an isolated environment, so
the install works offline. The library itself is not part of the package:
it is found through $MHA_LIBRARY or the dynamic loader (ldconfig), e.g.
after `cmake --install build --prefix /usr/local && ldconfig`."""
from setuptools import setup

setup(
    name="libmha",
    version="0.1.0",
    description=("Multi-head attention on Vulkan, OpenCL and CPU SIMD "
                 "devices, from NumPy and PyTorch"),
    packages=["libmha"],
    python_requires=">=3.8",
    install_requires=["numpy"],
    extras_require={"torch": ["torch"]},
)
