#!/usr/bin/env bash
# test-tsan.sh: the ThreadSanitizer step of scripts/test.sh. Builds libmha
# and the threads suite (tests/test_threads.c: several threads, each with
# its own context, on cpu, vulkan:0 and opencl:0 at once) with clang
# -fsanitize=thread in build-tsan, and runs it. Any report fails the run
# (halt_on_error, and a report exits with status 66). Nothing is
# suppressed: lavapipe and PoCL are not instrumented, so TSan sees only the
# intercepted calls their threads make, and those report nothing today. If
# a driver update brings reports inside the driver itself, suppress them by
# the driver's library only (a TSan suppressions file with
# "called_from_lib:libvulkan_lvp.so" or "race:libpocl"), never libmha.
# The suite runs on Criterion's sequential stand-in (tests/qemu), since
# Criterion's runner cannot start under TSan. Under a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export MHA_REQUIRE=${MHA_REQUIRE-vulkan,opencl}
CC=clang cmake -S . -B build-tsan -DMHA_TSAN=ON -DMHA_WERROR=ON \
      -DMHA_BUILD_TOOLS=OFF >/dev/null
cmake --build build-tsan -j"$(nproc)" --target test_threads >/dev/null
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1" \
  ctest --test-dir build-tsan --output-on-failure -R '^threads$'
