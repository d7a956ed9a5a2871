#!/usr/bin/env bash
# quickstart.sh: the README's first command. Installs what is missing,
# builds libmha in build/, lists the devices it finds (mha-info) and runs
# the example forward on the default device against the CPU reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh main
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMHA_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
./build/mha-info
echo
./build/example-forward
