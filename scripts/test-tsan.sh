#!/usr/bin/env bash
# test-tsan.sh: the ThreadSanitizer step of scripts/test.sh. Builds libmha
# and the threads suite (tests/test_threads.c: several threads, each with
# its own context, on cpu, vulkan:0 and opencl:0 at once) with clang
# -fsanitize=thread in build-tsan, and runs it. Any report fails the run
# (halt_on_error, and a report exits with status 66). lavapipe, PoCL and
# their LLVM are not instrumented, so TSan sees only the intercepted calls
# their threads make; tests/tsan.supp suppresses those of LLVM's own static
# initialisation by the library's name only, never libmha.
# The suite runs on Criterion's sequential stand-in (tests/qemu), since
# Criterion's runner cannot start under TSan. Under a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export MHA_REQUIRE=${MHA_REQUIRE-vulkan,opencl}
CC=clang cmake -S . -B build-tsan -DMHA_TSAN=ON -DMHA_WERROR=ON \
      -DMHA_BUILD_TOOLS=OFF >/dev/null
cmake --build build-tsan -j"$(nproc)" --target test_threads >/dev/null
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
  ctest --test-dir build-tsan --output-on-failure -R '^threads$'
