#!/usr/bin/env bash
# install-deps.sh main|test: installs the Debian 12 packages libmha needs
# that are missing: "main" to build and run it on every backend (OpenBLAS
# only as mha-bench's peer, never a dependency of the library; matplotlib
# for bench/plot.py), "test" also for the whole test suite (Criterion,
# validation layers, PyTorch for live fixtures, the AArch64 cross toolchain
# and qemu, valgrind, CLBlast for mha-bench's optional CLBlast peer and its
# test, clang with libFuzzer for the fuzz harnesses, and pytest, setuptools,
# wheel and venv for the Python package's tests and `pip install ./python`).
set -euo pipefail

main_pkgs=(cmake gcc make pkg-config libcjson-dev
           libvulkan-dev libvulkan-volk-dev glslc libvulkan1 mesa-vulkan-drivers
           opencl-c-headers ocl-icd-libopencl1 ocl-icd-opencl-dev pocl-opencl-icd
           libopenblas-dev python3-matplotlib)
test_pkgs=(libcriterion-dev vulkan-validationlayers python3-torch python3-numpy
           gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user valgrind
           libclblast-dev clang-14 libclang-rt-14-dev
           clang # the fuzz and ThreadSanitizer builds
           python3-pytest python3-setuptools python3-wheel python3-venv)

case "${1:-main}" in
  main) wanted=("${main_pkgs[@]}") ;;
  test) wanted=("${main_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: install-deps.sh main|test" >&2; exit 2 ;;
esac

missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "install-deps.sh: run as root to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "installing: ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
  --no-install-recommends "${missing[@]}" >/dev/null
