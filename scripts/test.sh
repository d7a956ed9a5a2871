#!/usr/bin/env bash
# test.sh: the README's second command, and what CI runs (.ci/run). Installs
# what is missing, then builds and runs the whole suite three times:
#   1. native build, warnings as errors, every backend required to have a
#      device (a skipped Vulkan or OpenCL suite fails), Vulkan under the
#      Khronos validation layers, plus fixtures regenerated live by PyTorch;
#   2. the same under AddressSanitizer and UBSan;
#   3. an AArch64 cross build run under qemu-aarch64, for the NEON kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh test
jobs=$(nproc)
export MHA_REQUIRE=vulkan,opencl MHA_REQUIRE_VULKAN=1 MHA_REQUIRE_OPENCL=1

step() { printf '\n==== %s\n' "$*"; }

step "native build"
cmake -S . -B build -DMHA_WERROR=ON >/dev/null
cmake --build build -j"$jobs" >/dev/null
ctest --test-dir build --output-on-failure -j"$jobs"

step "AddressSanitizer + UBSan build"
cmake -S . -B build-asan -DMHA_SANITIZE=ON -DMHA_WERROR=ON \
      -DMHA_BUILD_TOOLS=OFF >/dev/null
cmake --build build-asan -j"$jobs" >/dev/null
ASAN_OPTIONS=detect_leaks=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs" -LE valgrind

step "AArch64 cross build under qemu"
bash scripts/arm64-sysroot.sh build-arm64/sysroot
cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
      -DMHA_ARM64_SYSROOT="$PWD/build-arm64/sysroot" -DMHA_WERROR=ON \
      -DMHA_VULKAN=OFF -DMHA_OPENCL=OFF -DMHA_BUILD_TOOLS=OFF >/dev/null
cmake --build build-arm64 -j"$jobs" >/dev/null
MHA_REQUIRE= ctest --test-dir build-arm64 --output-on-failure -j"$jobs"
step "ThreadSanitizer build: the threads suite"; bash scripts/test-tsan.sh
