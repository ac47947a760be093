#!/bin/sh
# Build the libFuzzer targets with clang and run each for its share of a time budget.
#
#   fuzz/run.sh                      every target, 60 s in all (CI's short run)
#   fuzz/run.sh -t 3600 tar http     those targets, half an hour each
#
# -t SECONDS   the total budget, split evenly between the targets (default 60, at least 1 s each)
# TARGET...    names of fuzz/fuzz_<TARGET>.c (default: every one that is built)
# Environment: FUZZ_BUILD_DIR (default _build/fuzz: a clang build with --enable-fuzzing,
# configured on first use), FUZZ_JOBS (make -j).
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read only) and its
# regressions; what it learns goes to <build>/fuzz-corpus/<target>/ and stays there for the
# next run.  On a crash (an ASan or UBSan report, an invariant of the target, a leak, a
# timeout) the script prints the reproducer and how to replay it, and exits 1; a finished
# run prints executions and seconds per target.  The reproducer belongs, once the bug is
# fixed, in fuzz/regressions/<target>/, which `make check` replays (fuzz/README.md).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
total=60
while getopts t: opt; do
    case $opt in
    t) total=$OPTARG ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
case $total in
'' | *[!0-9]*) echo "fuzz/run.sh: -t takes a whole number of seconds, not '$total'" >&2; exit 2 ;;
esac
build=${FUZZ_BUILD_DIR:-$top/_build/fuzz}
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}

if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz/run.sh: clang is not installed (Debian: apt-get install clang libclang-rt-14-dev," \
         "or scripts/install-deps.sh)" >&2
    exit 1
fi
[ -f "$top/configure" ] || (cd "$top" && autoreconf -fi >/dev/null)
mkdir -p "$build"
if [ ! -f "$build/Makefile" ]; then
    echo "==== fuzz: configuring a clang build in $build"
    (cd "$build" && "$top/configure" -q CC=clang --enable-fuzzing)
fi
echo "==== fuzz: building the fuzzers"
make -s -C "$build" -j"$jobs" fuzz

if [ $# -eq 0 ]; then
    for f in "$top"/fuzz/fuzz_*.c; do
        t=${f##*/fuzz_}
        set -- "$@" "${t%.c}"
    done
fi
n=$#
share=$((total / n))
[ "$share" -ge 1 ] || share=1

failed=0
summary=""
for t in "$@"; do
    bin=$build/fuzz/fuzz_$t
    if [ ! -x "$bin" ]; then
        echo "fuzz/run.sh: no fuzzer '$t' (built ones: $(ls "$build/fuzz" | sed -n 's/^fuzz_//p' | tr '\n' ' '))" >&2
        exit 2
    fi
    work=$build/fuzz-corpus/$t
    art=$build/fuzz-artifacts/$t
    mkdir -p "$work" "$art"
    dict=""
    [ -f "$top/fuzz/dict/$t.dict" ] && dict="-dict=$top/fuzz/dict/$t.dict"
    seeds="$top/fuzz/corpus/$t"
    [ -d "$top/fuzz/regressions/$t" ] && seeds="$seeds $top/fuzz/regressions/$t"
    log=$build/fuzz-$t.log
    echo "==== fuzz: $t for $share s"
    rc=0
    # shellcheck disable=SC2086 # $dict and $seeds are word lists on purpose
    ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$bin" -max_total_time="$share" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$art/" $dict "$work" $seeds >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "---- fuzz: $t FAILED (exit $rc); the end of its log ($log):"
        tail -n 60 "$log"
        for a in "$art"/*; do
            [ -f "$a" ] || continue
            echo "---- reproducer $a ($(wc -c <"$a") bytes), base64:"
            base64 "$a"
            echo "---- replay it: $bin $a"
            echo "     or with the normal build: fuzz/replay_$t $a (from the build directory)"
            echo "     once fixed: cp $a $top/fuzz/regressions/$t/"
        done
        summary="$summary
  $t: CRASH after ${runs:-?} executions"
    else
        summary="$summary
  $t: ${runs:-?} executions in ${secs:-$share} s, no crash"
    fi
done
echo "==== fuzz: summary ($total s budget)$summary"
exit $failed
