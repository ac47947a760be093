#!/bin/sh
# The README's first command: install what ctarget needs, build it, install it under
# PREFIX (default ~/.local), and show that it answers.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-$HOME/.local}
jobs=$(nproc 2>/dev/null || echo 2)
"$top/scripts/install-deps.sh"
cd "$top"
[ -x configure ] || autoreconf -fi
mkdir -p _build/release && cd _build/release
[ -f Makefile ] || ../../configure --prefix="$prefix" -q
make -s -j"$jobs"
make -s install >/dev/null
ct="$prefix/bin/ctarget"
echo "ctarget installed in $prefix (add $prefix/bin to PATH)"
echo
echo "\$ ctarget plugins"
"$ct" plugins
echo
echo "\$ ctarget compute show local"
"$ct" compute show local
