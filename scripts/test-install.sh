#!/usr/bin/env bash
# test-install.sh [BUILD_DIR]: what a new user does after building, checked:
# installs BUILD_DIR (default build/) into a temporary prefix, moves the
# prefix elsewhere (an install must not depend on where it was made), then,
# with no libmha, test or loader variables set, runs the installed mha-info,
# mha-bench --preset quick (with a PyTorch row when /usr/bin/python3 has
# torch) and plot.py, and builds and runs examples/readme.c against the
# prefix twice: through find_package(mha) and through pkg-config; and, when
# the build installs the Python package (MHA_PYTHON), imports it from the
# prefix and runs one forward, and `pip install ./python` into a venv runs
# the README's first Python example against the prefix's library. Any
# failing step fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
build=$(cd "${1:-build}" && pwd)
tmp=$(mktemp -d /tmp/mha-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/staged" >/dev/null
mv "$tmp/staged" "$tmp/prefix"
prefix=$tmp/prefix
mkdir "$tmp/work"
cd "$tmp/work"
# a fresh login's environment: nothing of libmha's, no LD_LIBRARY_PATH
user() { env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$HOME" "$@"; }
say() { printf -- '-- %s\n' "$*"; }

say "installed mha-info"
user "$prefix/bin/mha-info"

say "installed mha-bench --preset quick"
user "$prefix/bin/mha-bench" --preset quick --warmup 1 --repeat 2 \
     --min-time 0 --json run.json
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  grep -q '"device":[[:space:]]*"torch"' run.json || {
    echo "test-install.sh: torch imports, but the installed mha-bench" \
         "wrote no PyTorch row" >&2; exit 1; }
fi

say "installed plot.py"
user /usr/bin/python3 "$prefix/share/libmha/plot.py" run.json -o run.png
test -s run.png

say "CMake consumer: find_package(mha) + target_link_libraries(app mha::mha)"
mkdir cmake-app
cp "$src/examples/readme.c" cmake-app/app.c
cat > cmake-app/CMakeLists.txt <<'CMAKE'
cmake_minimum_required(VERSION 3.18)
project(app C)
find_package(mha CONFIG REQUIRED)
add_executable(app app.c)
target_link_libraries(app PRIVATE mha::mha)
CMAKE
user cmake -S cmake-app -B cmake-app/build -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
user cmake --build cmake-app/build >/dev/null
user cmake-app/build/app

say "pkg-config consumer: cc app.c \$(pkg-config --cflags --libs mha)"
pc() { user PKG_CONFIG_PATH="$(dirname "$(find "$prefix" -name mha.pc)")" \
            pkg-config "$@" mha; }
# shellcheck disable=SC2046 # pkg-config's flags are meant to split
user cc -o pc-app "$src/examples/readme.c" $(pc --cflags --libs) \
     -Wl,-rpath,"$(pc --variable=libdir)"
user ./pc-app
pydir=$(find "$prefix" -type d -name libmha -path '*-packages/libmha' | head -n1)
if [ -n "$pydir" ]; then
  say "installed Python package: import libmha from $(dirname "$pydir"), one forward"
  user PYTHONPATH="$(dirname "$pydir")" /usr/bin/python3 - "$prefix" <<'PY'
import sys
import numpy as np
import libmha
assert libmha.library_path().startswith(sys.argv[1]), libmha.library_path()
attn = libmha.MultiheadAttention(8, 2, batch_first=True)
attn.load_state_dict({"in_proj_weight": np.tile(np.eye(8, dtype=np.float32), (3, 1)),
                      "in_proj_bias": np.zeros(24, np.float32),
                      "out_proj.weight": np.eye(8, dtype=np.float32),
                      "out_proj.bias": np.zeros(8, np.float32)})
x = np.ones((1, 4, 8), np.float32)
out, _ = attn(x, x, x, need_weights=False)
assert np.allclose(out, x), out
print("libmha", libmha.version(), "from", libmha.library_path(), "on",
      attn.device.spec)
PY

  say "pip install ./python into a venv, offline; the README's first Python example"
  user /usr/bin/python3 -m venv --system-site-packages venv
  cp -r "$src/python" pysrc # pip's legacy build writes beside setup.py
  user venv/bin/pip install --no-index --quiet ./pysrc
  awk '/^## Python/{p=1} p && /^```python/{f=1; next} f && /^```/{exit} f' \
      "$src/README.md" >readme_example.py
  user MHA_LIBRARY="$(find "$prefix" -name 'libmha.so.*.*' | head -n1)" \
       venv/bin/python3 -c "exec(open('readme_example.py').read()); print('out', out.shape)"
fi
say "install checks passed"
