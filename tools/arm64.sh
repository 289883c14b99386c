#!/bin/sh
# Cross-builds the library and its unit suite for AArch64 (Debian's gcc-aarch64-linux-gnu,
# cross/aarch64-linux-gnu.ini) into build-arm64 and runs the suite under qemu-user-static
# (meson's exe_wrapper): the NEON kernels (lib/kernels/kernels_neon.c) are checked against the
# scalar reference by the same tests as the x86 levels. OpenBLAS, SentencePiece, hiredis, C++
# and Python have no arm64 counterpart installed: the parts that need them are skipped, each
# with a message at setup. Without the toolchain or qemu it says so and exits 77 (a skip).
#   sh tools/arm64.sh            build, then meson test --suite unit (over an hour under qemu
#                                on a shared 2-core machine: tests run 5-9x slower than native)
#   sh tools/arm64.sh TEST...    build, then only the named tests (e.g. kernels topk v4)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-arm64"
for tool in aarch64-linux-gnu-gcc qemu-aarch64-static; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "arm64: $tool not found (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static); skipped" >&2
        exit 77
    fi
done
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" "$root" --cross-file "$root/cross/aarch64-linux-gnu.ini" \
        --buildtype=release -Dbench=false -Dlong_tests=false
fi
ninja -C "$build"
# qemu runs the tests several times slower than a native core: longer timeouts.
meson test -C "$build" --suite unit --timeout-multiplier 6 --print-errorlogs "$@"
