#!/bin/sh
# The README's quick start. On a fresh Debian 12 machine (as root, or with sudo) it installs
# what is missing, builds, and then:
#   sh tools/dev.sh demo    runs the host decode example (indexer over the paged key cache), then
#                           the CPU engine example (IndexCache, indexer, sparse attention), then
#                           (when ../shared/data is present) the real model generating text
#   sh tools/dev.sh test    runs the test suite, then a subset under ASan+UBSan, and ends with
#                           the line "N passed, N failed"
#   sh tools/dev.sh bench   runs the benchmark (JSON lines)
#   sh tools/dev.sh docs    renders the public headers with doxygen into build/docs/html and
#                           fails on any doxygen warning (an undocumented declaration included)
set -eu
cd "$(dirname "$0")/.."
what=${1:-}
case $what in demo|test|bench|docs) ;; *) echo "usage: sh tools/dev.sh demo|test|bench|docs" >&2; exit 2 ;; esac

packages="build-essential meson ninja-build pkg-config python3 python3-numpy cmake libopenblas-openmp-dev libsentencepiece-dev libhiredis-dev redis-server"
[ "$what" = docs ] && packages="python3 doxygen"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

[ "$what" = docs ] && exec python3 tools/docs.py build/docs

[ -d build ] || meson setup build --buildtype=release
ninja -C build

case $what in
demo)
    ./build/examples/host_decode
    echo
    ./build/examples/cpu_engine
    if [ -f ../shared/data/model/manifest.json ] && [ -x build/examples/llm/llm ]; then
        echo
        exec ./build/examples/llm/llm generate --model ../shared/data/model -n 24 \
            --config dsa_k128 --prompt "In the beginning God created"
    fi
    ;;
bench)
    exec ./build/bench/sparsekv-bench
    ;;
esac

# Counts one meson test log: prints "passed failed" (a missing log counts as one failure).
count() {
    python3 - "$1" <<'PY'
import json, os, sys
ok = bad = 0
if not os.path.exists(sys.argv[1]):
    print(0, 1)
    sys.exit()
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r in ("OK", "EXPECTEDFAIL"):
        ok += 1
    elif r != "SKIP":
        bad += 1
print(ok, bad)
PY
}

status=0
meson test -C build --suite unit --print-errorlogs || status=1
set -- $(count build/meson-logs/testlog.json)
passed=$1 failed=$2

# The same programs under AddressSanitizer and UndefinedBehaviorSanitizer (the indexer, v4 and
# router tests in their quick modes: the full ones are too slow instrumented for CI's time limit;
# the unit suite above runs them in full).
if [ ! -d build-asan ]; then
    meson setup build-asan --buildtype=debugoptimized -Db_sanitize=address,undefined \
        -Db_lundef=false -Dbench=false >/dev/null
fi
ninja -C build-asan
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
meson test -C build-asan --setup full --suite sanitize --print-errorlogs || status=1
set -- $(count build-asan/meson-logs/testlog-full.json)
passed=$((passed + $1)) failed=$((failed + $2))

echo "$passed passed, $failed failed"
exit $status
