#!/bin/sh
# The README's second command: the whole test suite, as CI runs it.
#   1. make distcheck      (the tarball, built from it with -Werror: every CUnit program,
#                           real processes and servers; installs, the out-of-tree vendor
#                           plugin builds from the installed headers, uninstalls clean)
#   2. make check again under AddressSanitizer + UndefinedBehaviorSanitizer
#   4. Debian packages     (from that tarball: dpkg-buildpackage, lintian, dpkg -i, the example
#                           on local, one plugin removed, the vendor plugin against
#                           libctarget-dev, everything purged: tests/packaging/check.sh)
#   5. fuzz/run.sh         (every libFuzzer target, clang, about a minute in all; a crash
#                           fails the suite and prints its reproducer)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)
# test programs mostly wait on their servers (sshd, Slurm, the emulators, Azurite), not the
# CPU: twice as many at once as there are cores (every test is deterministic by construction)
check_jobs=$((jobs * 2))
"$top/scripts/install-deps.sh"
cd "$top"
autoreconf -fi >/dev/null 2>&1 || autoreconf -fi
start=$(date +%s)

step() { printf '\n==== %s\n' "$*"; }
show_failures() {
    for log in "$1"/tests/*.log; do
        [ -f "$log" ] || continue
        if grep -q '^:test-result: \(FAIL\|ERROR\)' "${log%.log}.trs" 2>/dev/null; then
            echo "---- $log"
            tail -n 80 "$log"
        fi
    done
}
run_check() {
    # $1: build directory; the rest: configure flags
    dir=$1
    shift
    rm -rf "$dir" && mkdir -p "$dir"
    if ! (cd "$dir" && "$top/configure" -q "$@" && make -s -j"$jobs" &&
          make -s -j"$check_jobs" check); then
        show_failures "$dir"
        return 1
    fi
}

# distcheck's own `make check` (in the tarball's build, with -Werror) is the plain test pass:
# a separate `make check` beforehand would run every program twice for nothing
step "make distcheck (make check of the tarball, -Werror)"
rm -rf "$top/_build/check" && mkdir -p "$top/_build/check"
# (distcheck builds from the tarball: this configured tree only makes the tarball, its own
# build would be a third one for nothing)
if ! (cd "$top/_build/check" && "$top/configure" -q --enable-werror &&
      make -s -j"$check_jobs" distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror); then
    for d in "$top"/_build/check/ctarget-*/_build/sub; do
        [ -d "$d" ] && show_failures "$d"
    done
    exit 1
fi
step "make check under ASan+UBSan"
run_check "$top/_build/asan" --enable-sanitizers
step "Debian packages"
set -- "$top"/_build/check/ctarget-*.tar.gz
"$top/tests/packaging/check.sh" "$1"
step "fuzz: a short run of every target (fuzz/README.md)"
FUZZ_BUILD_DIR="$top/_build/fuzz" "$top/fuzz/run.sh" -t "${CTARGET_FUZZ_SECONDS:-60}"
step "all passed in $(($(date +%s) - start)) s"
