#!/usr/bin/env bash
# Builds the guest kernel (uncompressed ELF vmlinux) from Debian's linux-source-6.1 with the
# committed fragment images/kernel/vulcan.config, and installs it into an images dir.
# The result is cached outside the repo under $VULCAN_CACHE_DIR/kernel/<key>, where key is
# the SHA-256 of the fragment, this script and the source tarball: an unchanged input never
# rebuilds.
#
# usage: scripts/build-kernel.sh IMAGES_DIR
set -euo pipefail

images_dir=${1:?usage: build-kernel.sh IMAGES_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
fragment=$here/images/kernel/vulcan.config
src=${VULCAN_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
cache=${VULCAN_CACHE_DIR:-$( [ "$(id -u)" = 0 ] && echo /var/cache/vulcan || echo "$HOME/.cache/vulcan")}

if [ ! -f "$src" ]; then
  echo "build-kernel: $src not found; install it with: apt-get install linux-source-6.1" >&2
  exit 1
fi

key=$( { sha256sum "$fragment" "$0" | cut -d' ' -f1; sha256sum "$src" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
out=$cache/kernel/$key
mkdir -p "$cache/kernel" "$images_dir"

exec 9>"$cache/kernel/.lock"
flock 9

if [ ! -s "$out/vmlinux" ]; then
  start=$(date +%s)
  build=$cache/build/linux-$key
  rm -rf "$build" && mkdir -p "$build"
  echo "build-kernel: extracting $src (key $key)"
  tar -xJf "$src" -C "$build" --strip-components=1
  cd "$build"
  make -s ARCH=x86_64 tinyconfig
  # tinyconfig's x86 preset is 32-bit: 64BIT must be on before anything else resolves.
  ./scripts/config --enable 64BIT
  make -s ARCH=x86_64 olddefconfig
  # Apply the fragment twice: some options only become visible once their parents are on.
  for _ in 1 2; do
    while read -r line; do
      case "$line" in
        CONFIG_*=y) opt=${line%%=*}; ./scripts/config --enable "${opt#CONFIG_}" ;;
        "# CONFIG_"*" is not set") opt=${line#\# CONFIG_}; ./scripts/config --disable "${opt%% *}" ;;
      esac
    done < "$fragment"
    make -s ARCH=x86_64 olddefconfig
  done
  missing=0
  while read -r line; do
    case "$line" in
      CONFIG_*=y) grep -qx "$line" .config || { echo "build-kernel: $line did not stick" >&2; missing=1; } ;;
    esac
  done < "$fragment"
  [ "$missing" = 0 ] || exit 1
  echo "build-kernel: compiling vmlinux with $(nproc) jobs"
  make -s ARCH=x86_64 -j"$(nproc)" vmlinux
  tmp=$(mktemp -d "$cache/kernel/.tmp.XXXXXX")
  cp vmlinux "$tmp/vmlinux"
  cp .config "$tmp/vmlinux.config"
  version=$(make -s ARCH=x86_64 kernelrelease)
  secs=$(( $(date +%s) - start ))
  printf '{"kind":"kernel","version":"%s","key":"%s","sha256":"%s","size_bytes":%s,"build_seconds":%s,"built_at":"%s"}\n' \
    "$version" "$key" "$(sha256sum vmlinux | cut -d' ' -f1)" "$(stat -c %s vmlinux)" "$secs" "$(date -u +%FT%TZ)" > "$tmp/kernel.json"
  cd /
  rm -rf "$out" && mv "$tmp" "$out"
  rm -rf "$build"
  echo "build-kernel: built in ${secs}s"
fi

for f in vmlinux vmlinux.config kernel.json; do
  cp -f "$out/$f" "$images_dir/$f.tmp" && mv -f "$images_dir/$f.tmp" "$images_dir/$f"
done
echo "build-kernel: $images_dir/vmlinux ($(cat "$out/kernel.json"))"
