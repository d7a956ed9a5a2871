#!/usr/bin/env bash
# quickstart.sh: the README's first command. Installs what is missing,
# builds libmha in build/, lists the devices it finds (mha-info) and runs
# the quick preset of mha-bench on every device, each result checked
# against the CPU reference, with OpenBLAS and PyTorch rows when present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh main
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMHA_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
./build/mha-info
echo
./build/mha-bench --preset quick
