#!/usr/bin/env bash
# Installs the tokenlease C library, header, pkg-config file and CMake package config into a
# prefix, laid out like cargo-c does:
#
#   PREFIX/include/tokenlease.h
#   PREFIX/lib/libtokenlease.so.0.1.0 (+ libtokenlease.so.0.1 and libtokenlease.so symlinks)
#   PREFIX/lib/libtokenlease.a
#   PREFIX/lib/pkgconfig/tokenlease.pc
#   PREFIX/lib/cmake/tokenlease/tokenleaseConfig.cmake, tokenleaseConfigVersion.cmake
#
# Usage: ffi-c/install.sh PREFIX [debug|release]   (default: release)
# Builds with `cargo build -p tokenlease-ffi` first, reusing CARGO_TARGET_DIR (default
# ~/.cache/tokenlease/target, or TOKENLEASE_CACHE_DIR/target, as the other scripts do).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
prefix="${1:?usage: ffi-c/install.sh PREFIX [debug|release]}"
profile="${2:-release}"
# shellcheck source=../scripts/lib.sh
. "$root/scripts/lib.sh"
export CARGO_TARGET_DIR="$(default_target_dir)"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
major="${version%%.*}"
rest="${version#*.}"
minor="${rest%%.*}"
if [ "$major" = 0 ]; then soversion="0.$minor"; else soversion="$major"; fi

if [ "${TOKENLEASE_SKIP_BUILD:-0}" != 1 ]; then
  if [ "$profile" = release ]; then
    (cd "$root" && cargo build -p tokenlease-ffi --release)
  else
    (cd "$root" && cargo build -p tokenlease-ffi)
  fi
fi
libdir_build="$CARGO_TARGET_DIR/$profile"

mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/tokenlease"
prefix="$(cd "$prefix" && pwd)"
install -m 0644 "$root/include/tokenlease.h" "$prefix/include/tokenlease.h"
install -m 0755 "$libdir_build/libtokenlease.so" "$prefix/lib/libtokenlease.so.$version"
ln -sf "libtokenlease.so.$version" "$prefix/lib/libtokenlease.so.$soversion"
ln -sf "libtokenlease.so.$soversion" "$prefix/lib/libtokenlease.so"
install -m 0644 "$libdir_build/libtokenlease.a" "$prefix/lib/libtokenlease.a"

sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" \
  "$here/tokenlease.pc.in" > "$prefix/lib/pkgconfig/tokenlease.pc"
install -m 0644 "$here/cmake/tokenleaseConfig.cmake" "$prefix/lib/cmake/tokenlease/"
sed -e "s|@VERSION@|$version|g" "$here/cmake/tokenleaseConfigVersion.cmake.in" \
  > "$prefix/lib/cmake/tokenlease/tokenleaseConfigVersion.cmake"
echo "installed tokenlease $version ($profile) into $prefix"
