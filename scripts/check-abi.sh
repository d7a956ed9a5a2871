#!/usr/bin/env bash
# check-abi.sh: holds libmha's ABI to the committed tests/abi/libmha.abi:
# the soname, every exported symbol (nm -D of libmha.so) and the layout of
# every public struct and constant (tests/abi/layout.c). An ABI may grow
# without a new soname (a new symbol, a field appended to a struct that has
# struct_size, a new constant); anything else (a symbol gone, a field moved
# or resized, a fixed struct resized, a constant changed) needs a version
# bump, which changes the soname (CMakeLists.txt: 0.MINOR while major is 0).
#
#   scripts/check-abi.sh [BUILD_DIR]           compare; exit 1 on any change
#   scripts/check-abi.sh --update [BUILD_DIR]  record the current ABI, refused
#                                              for a break without a bump
# BUILD_DIR (default build) is a native build with every backend on.
set -euo pipefail
cd "$(dirname "$0")/.."
update=0
if [[ ${1:-} == --update ]]; then update=1; shift; fi
build=${1:-build}
committed=tests/abi/libmha.abi
lib=$build/libmha.so

# mha.h's version is the one the soname is made from.
header=$(sed -n 's/^#define MHA_VERSION_STRING "\(.*\)"/\1/p' include/mha.h)
project=$(sed -n 's/^project(libmha VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
if [[ $header != "$project" ]]; then
  echo "check-abi: mha.h says $header, CMakeLists.txt's project() $project"
  exit 1
fi

current=$(mktemp)
trap 'rm -f "$current" "$current.layout"' EXIT
cc -std=c11 -Wall -Wextra -Werror -Iinclude tests/abi/layout.c \
   -o "$current.layout"
{
  objdump -p "$lib" | awk '$1 == "SONAME" {print "soname " $2}'
  nm -D --defined-only "$lib" | awk '$2 ~ /^[TDRBVW]$/ {print "symbol " $3}' |
    LC_ALL=C sort
  "$current.layout"
} >"$current"

soname() { awk '$1 == "soname" {print $2}' "$1"; }
# Lines of the committed ABI the current one no longer has: breaks.
removed=$(LC_ALL=C comm -23 <(LC_ALL=C sort "$committed") <(LC_ALL=C sort "$current") |
          grep -v '^soname ' || true)
added=$(LC_ALL=C comm -13 <(LC_ALL=C sort "$committed") <(LC_ALL=C sort "$current") |
        grep -v '^soname ' || true)
same_soname=0
[[ $(soname "$committed") == $(soname "$current") ]] && same_soname=1

if [[ -n $removed && $same_soname == 1 ]]; then
  echo "check-abi: ABI break without a version bump (soname $(soname "$current")):"
  sed 's/^/  - /' <<<"$removed"
  [[ -n $added ]] && sed 's/^/  + /' <<<"$added"
  echo "check-abi: keep the old symbols and layouts, or bump MHA_VERSION_MINOR"
  echo "  (project VERSION in CMakeLists.txt and mha.h) so the soname changes."
  exit 1
fi
if ((update)); then
  cp "$current" "$committed"
  echo "check-abi: recorded $(wc -l <"$committed") lines in $committed"
  exit 0
fi
if [[ -z $removed && -z $added && $same_soname == 1 ]]; then
  echo "check-abi: $(soname "$current"): $(grep -c '^symbol ' "$current") symbols," \
       "$(grep -c '^field ' "$current") struct fields," \
       "$(grep -c '^const ' "$current") constants as recorded"
  exit 0
fi
echo "check-abi: the ABI changed compatibly or with a new soname" \
     "($(soname "$committed") -> $(soname "$current")):"
[[ -n $removed ]] && sed 's/^/  - /' <<<"$removed"
[[ -n $added ]] && sed 's/^/  + /' <<<"$added"
echo "check-abi: record it with scripts/check-abi.sh --update $build"
exit 1
