#!/bin/sh
# ThreadSanitizer run of the concurrency test (tests/test_threads.c: contexts, key caches and
# stores used from several host threads at once, one per thread; results compared bit for bit
# with a single-threaded run) and of the slices (tests/test_slices.c: a pthread pool's workers
# reading one key cache, store or pool at once, the MISA memo filled before the barrier).
#   sh tools/tsan.sh            the library without OpenMP (-Dopenmp=disabled): every access is
#                               instrumented; this is the run that must report nothing
#   sh tools/tsan.sh openmp     with GCC's OpenMP and TSAN_OPTIONS=ignore_noninstrumented_modules=1:
#                               libgomp is not instrumented, so TSan cannot see its barriers and
#                               reports every write inside a parallel region read after it as a
#                               race (a false positive: see docs/hardening.md); for inspection only
# Both build the scalar kernels only (-Dsimd=false): gcc takes tens of minutes over the SIMD
# kernel files under TSan, and the threading code (contexts, workspaces, object state) is the
# same at every CPU level. The OpenMP-region part of the test (the library called from inside a
# host's parallel region) runs in the unit suite of the normal build.
set -eu
mode=${1:-noopenmp}
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-tsan-$mode"
omp=disabled
[ "$mode" = openmp ] && omp=enabled
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" "$root" --buildtype=debugoptimized -Db_sanitize=thread -Db_lundef=false \
        -Dbench=false -Dblas=disabled -Dopenmp=$omp -Dsimd=false -Dlong_tests=false
fi
ninja -C "$build" tests/test_threads tests/test_slices
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
"$build/tests/test_threads"
"$build/tests/test_slices"
echo "tsan ($mode): no race reported"
