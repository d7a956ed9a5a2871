#!/usr/bin/env bash
# test.sh: the README's second command, and what CI runs (.ci/run). Installs
# what is missing, then runs one step per stage:
#   native: build/ (every option given, so a cache left by a hand-made
#      configure cannot change it), warnings as errors, every backend
#      required to have a device (a skipped Vulkan or OpenCL suite fails),
#      Vulkan under the Khronos validation layers, fixtures regenerated live
#      by PyTorch, the README's example built and run;
#   asan: the same under AddressSanitizer and UBSan, less the valgrind
#      suites, the reruns of a suite under other kernels or data (label
#      rerun) and most of the validation layers (tests/CMakeLists.txt);
#   arm64: an AArch64 cross build run under qemu-aarch64, for the NEON kernels;
#   abi: exported symbols and public struct layouts against
#      tests/abi/libmha.abi (scripts/check-abi.sh);
#   mutants: every pattern of scripts/mutants.txt still matches the code
#      (the mutation run itself is scripts/mutate.sh, too long for CI);
#   fuzz: 20 s of each libFuzzer harness (scripts/test-fuzz.sh);
#   install: the native build installed to a temporary prefix, its tools run
#      and consumed from CMake and pkg-config (scripts/test-install.sh).
# Each CTest run fails when it finds no tests (--no-tests=error) or fewer
# than the least its step expects, so a configuration that drops suites
# cannot pass as green.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh test
jobs=$(nproc)
export MHA_REQUIRE=vulkan,opencl MHA_REQUIRE_VULKAN=1 MHA_REQUIRE_OPENCL=1

# step NAME COMMAND...: one stage, headed by its name; any failure ends the run.
step() { printf '\n==== %s\n' "$1"; shift; "$@"; }

# run_ctest DIR MIN [ctest args]: runs DIR's tests, failing when fewer than
# MIN are selected.
run_ctest() {
  local dir=$1 min=$2 n
  shift 2
  n=$(ctest --test-dir "$dir" -N "$@" | sed -n 's/^Total Tests: //p')
  if [ "${n:-0}" -lt "$min" ]; then
    echo "test.sh: $dir has ${n:-0} tests; expected at least $min" >&2
    return 1
  fi
  ctest --test-dir "$dir" --output-on-failure --no-tests=error -j"$jobs" "$@"
}

native() {
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMHA_BUILD_TESTS=ON \
        -DMHA_BUILD_TOOLS=ON -DMHA_VULKAN=ON -DMHA_OPENCL=ON \
        -DMHA_SANITIZE=OFF -DMHA_WERROR=ON >/dev/null
  cmake --build build -j"$jobs" >/dev/null
  run_ctest build 32
}

asan() {
  cmake -S . -B build-asan -DMHA_SANITIZE=ON -DMHA_WERROR=ON \
        -DMHA_BUILD_TESTS=ON -DMHA_BUILD_TOOLS=OFF >/dev/null
  cmake --build build-asan -j"$jobs" >/dev/null
  ASAN_OPTIONS=detect_leaks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_ctest build-asan 18 -LE "valgrind|rerun"
}

arm64() {
  bash scripts/arm64-sysroot.sh build-arm64/sysroot
  cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
        -DMHA_ARM64_SYSROOT="$PWD/build-arm64/sysroot" -DMHA_WERROR=ON \
        -DMHA_BUILD_TESTS=ON -DMHA_VULKAN=OFF -DMHA_OPENCL=OFF \
        -DMHA_BUILD_TOOLS=OFF >/dev/null
  cmake --build build-arm64 -j"$jobs" >/dev/null
  MHA_REQUIRE='' run_ctest build-arm64 3
}

step "native build" native
step "ABI against tests/abi/libmha.abi" bash scripts/check-abi.sh build
step "every mutant of scripts/mutants.txt still applies" \
  bash scripts/mutate.sh --check
step "AddressSanitizer + UBSan build" asan
step "libFuzzer harnesses, 20 s each" bash scripts/test-fuzz.sh
step "AArch64 cross build under qemu" arm64
step "ThreadSanitizer build: the threads suite" bash scripts/test-tsan.sh
step "install to a temporary prefix" bash scripts/test-install.sh build
