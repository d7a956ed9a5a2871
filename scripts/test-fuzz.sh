#!/usr/bin/env bash
# test-fuzz.sh: builds the libFuzzer harnesses of tests/fuzz with clang
# (build-fuzz, -DMHA_FUZZ=ON: ASan + UBSan + libFuzzer) and runs each for
# FUZZ_SECONDS (default 20) from its committed seed corpus; any crash, leak,
# sanitizer report or timeout fails. New inputs the fuzzer finds go to
# build-fuzz/corpus/<harness>, so repeated runs go deeper; a crashing input
# is left in build-fuzz/crash-* for a test. For a long run:
#   FUZZ_SECONDS=14400 scripts/test-fuzz.sh            (4 hours each)
#   FUZZ_SECONDS=3600 scripts/test-fuzz.sh forward_args (one harness)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
cc=${FUZZ_CC:-clang-14}
command -v "$cc" >/dev/null || cc=clang
CC=$cc cmake -S . -B build-fuzz -DMHA_FUZZ=ON -DMHA_WERROR=ON \
      -DMHA_BUILD_TESTS=OFF -DMHA_BUILD_TOOLS=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" >/dev/null
harnesses=("$@")
if ((${#harnesses[@]} == 0)); then
  for f in build-fuzz/tests/fuzz/fuzz_*; do
    [[ -x $f && -f $f ]] && harnesses+=("${f##*/fuzz_}")
  done
fi
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# fuzz_one HARNESS: runs it for $seconds; on a finding prints the log's end.
fuzz_one() {
  local h=$1 work=build-fuzz/corpus/$1 log=build-fuzz/fuzz_$1.log runs
  mkdir -p "$work"
  if ! build-fuzz/tests/fuzz/fuzz_"$h" -max_total_time="$seconds" \
         -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
         -artifact_prefix=build-fuzz/ "$work" tests/fuzz/corpus/"$h" \
         >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "test-fuzz: fuzz_$h failed (log: $log)"
    return 1
  fi
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
  echo "test-fuzz: fuzz_$h: $runs executions in ${seconds}s, no findings"
}

# One harness a core at a time: each is single-threaded, and -max_total_time
# is wall time, so the run takes seconds x harnesses / cores.
cores=$(nproc) running=0 failed=0
for h in "${harnesses[@]}"; do
  fuzz_one "$h" &
  running=$((running + 1))
  if ((running >= cores)); then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while ((running > 0)); do
  wait -n || failed=1
  running=$((running - 1))
done
exit "$failed"
