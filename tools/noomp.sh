#!/bin/sh
# The slices and the concurrency test with the library built WITHOUT OpenMP (-Dopenmp=disabled,
# every SIMD level): a host that links sparsekv into an engine with its own thread pool may
# build it so. tests/test_slices.c then compares each slice, for nth = 1..5 from a pthread
# pool, with the entry point run on one thread; the unit suite's build compares them with
# the OpenMP entry points. Builds build-noomp once (release, -j2), then runs both programs.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-noomp"
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" "$root" --buildtype=release -Dopenmp=disabled -Dbench=false \
        -Dlong_tests=false
fi
ninja -C "$build" -j2 tests/test_slices tests/test_threads
"$build/tests/test_threads"
"$build/tests/test_slices"
echo "slices without OpenMP: bit-identical"
