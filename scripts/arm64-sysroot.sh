#!/usr/bin/env bash
# arm64-sysroot.sh DIR: unpacks Debian's arm64 Criterion and cJSON (with
# their library dependencies) into DIR, without installing them. Debian's
# libcriterion-dev cannot be installed for amd64 and arm64 at once, and the
# native test build needs the amd64 one; the AArch64 cross build
# (cmake/aarch64-linux-gnu.cmake) links against this private copy instead.
set -euo pipefail
dest=$(realpath -m "${1:?usage: arm64-sysroot.sh DIR}")
[ -f "$dest/.complete" ] && exit 0

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi

# The dependency closure, less the C runtime that the cross toolchain
# (libc6-dev-arm64-cross) already provides.
pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests \
         --no-conflicts --no-breaks --no-replaces --no-enhances \
         libcriterion-dev:arm64 libcjson-dev:arm64 |
       grep -E '^[a-z0-9][^ ]*:arm64$' |
       grep -vE '^(libc6|libc6-dev|libc-dev-bin|linux-libc-dev|libgcc-s1|gcc-12-base|libcrypt1|libcrypt-dev|libnsl2|libnsl-dev|libtirpc3|libtirpc-dev|libtirpc-common):arm64$' |
       sort -u)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root $pkgs)
mkdir -p "$dest"
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$dest"
done
touch "$dest/.complete"
echo "arm64 sysroot ready in $dest ($(ls "$work"/*.deb | wc -l) packages)"
