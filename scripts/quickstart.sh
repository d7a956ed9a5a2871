#!/usr/bin/env bash
# quickstart.sh: the README's first command. Installs what is missing,
# builds libmha and its tools in build-quick/ (its own folder, every option
# given, so test.sh's build/ or a hand-made cache cannot change it), lists
# the devices it finds (mha-info) and runs the quick preset of mha-bench on
# every device, each result checked against the CPU reference, with
# OpenBLAS, CLBlast and PyTorch rows when present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh main
cmake -S . -B build-quick -DCMAKE_BUILD_TYPE=Release -DMHA_BUILD_TESTS=OFF \
      -DMHA_BUILD_TOOLS=ON -DMHA_VULKAN=ON -DMHA_OPENCL=ON -DMHA_SANITIZE=OFF \
      -DMHA_WERROR=OFF >/dev/null
cmake --build build-quick -j"$(nproc)" >/dev/null
./build-quick/mha-info
echo
./build-quick/mha-bench --preset quick
cat <<'NEXT'

Next: bash scripts/test.sh runs the test suite (its own build in build/);
cmake --install build-quick --prefix DIR installs libmha, mha-info, mha-bench
and DIR/share/libmha/{plot.py,export_safetensors.py} (README: Building).
NEXT
