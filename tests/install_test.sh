#!/bin/sh
# Installs the build into a temporary destdir and builds a tiny consumer twice: with nothing
# but `pkg-config --cflags --libs sparsekv`, and as a CMake project with find_package(sparsekv)
# and the target sparsekv::sparsekv; runs both. Usage: install_test.sh BUILD_DIR CC [FLAGS]
# (FLAGS: the build's -fsanitize=..., which a consumer of a sanitized library needs)
set -eu
build=$1
cc=$2
flags=${3:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
pc=$(find "$tmp/root" -name sparsekv.pc | head -n 1)
[ -n "$pc" ] || { echo "sparsekv.pc not installed"; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")"
export PKG_CONFIG_SYSROOT_DIR="$tmp/root"
cat > "$tmp/consumer.c" <<'C'
#include <sparsekv/sparsekv.h>
#include <stdio.h>
int main(void)
{
    skv_context *ctx;
    if (skv_context_create(NULL, &ctx) != SKV_OK)
        return 1;
    const float q[2 * 4] = {1, 0, 0, 0, 0, 1, 0, 0}, w[2] = {1, 0.5f};
    const float k[3 * 4] = {0, 0, 1, 0, 3, 0, 0, 0, 1, 4, 0, 0};
    skv_indexer_query qq = {1, 2, 4, SKV_F32, q, NULL, w, NULL};
    skv_key_block kb = {3, 4, SKV_F32, k, NULL};
    int32_t idx[2];
    float sc[2];
    skv_status s = skv_indexer_topk(ctx, &qq, &kb, 2, idx, sc);
    skv_context_destroy(ctx);
    printf("%s: %d %d %g %g (version %d)\n", skv_status_string(s), idx[0], idx[1], sc[0], sc[1], skv_version());
    return s != SKV_OK || idx[0] != 1 || idx[1] != 2 || sc[0] != 3 || sc[1] != 3;
}
C
# shellcheck disable=SC2046,SC2086
"$cc" -std=c11 -Wall -Werror $flags -o "$tmp/consumer" "$tmp/consumer.c" $(pkg-config --cflags --libs sparsekv)
libdir=$(pkg-config --variable=libdir sparsekv)
case $libdir in "$tmp/root"*) ;; *) libdir="$tmp/root$libdir" ;; esac # pkgconf adds the sysroot
LD_LIBRARY_PATH="$libdir" "$tmp/consumer"

# The CMake consumer: the installed package found in its folder (SKV_DIR), nothing else.
command -v cmake >/dev/null || { echo "cmake not installed: the CMake consumer is not tested"; exit 77; }
config=$(find "$tmp/root" -name sparsekvConfig.cmake | head -n 1)
[ -n "$config" ] || { echo "sparsekvConfig.cmake not installed"; exit 1; }
mkdir "$tmp/cm"
cp "$tmp/consumer.c" "$tmp/cm/consumer.c"
cat > "$tmp/cm/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.16)
project(consumer C)
foreach(other 99 0.1) # refused: another major; another ABI while the major is 0
  find_package(sparsekv ${other} CONFIG QUIET PATHS "${SKV_DIR}" NO_DEFAULT_PATH)
  if(sparsekv_FOUND)
    message(FATAL_ERROR "sparsekv: version ${other} was accepted")
  endif()
endforeach()
find_package(sparsekv 0.2 REQUIRED CONFIG PATHS "${SKV_DIR}" NO_DEFAULT_PATH)
add_executable(consumer consumer.c)
target_link_libraries(consumer PRIVATE sparsekv::sparsekv)
set_target_properties(consumer PROPERTIES C_STANDARD 11)
CM
cmake -S "$tmp/cm" -B "$tmp/cm/build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="-Wall -Werror $flags" \
    -DSKV_DIR="$(dirname "$config")" >"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log"; exit 1; }
cmake --build "$tmp/cm/build" >>"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log"; exit 1; }
"$tmp/cm/build/consumer" # the imported target's full path is in its RUNPATH
