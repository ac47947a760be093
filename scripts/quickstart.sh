#!/bin/sh
# The README's first command: install what ctarget needs, build it, install it under
# PREFIX (default ~/.local), and train the example model on the local target, streaming its
# logs; then show the run ctarget recorded.
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
echo "\$ ctarget compute show local"
"$ct" compute show local
echo
echo "\$ ctarget run submit --target local --source examples/train --script train.py --stream"
"$ct" run submit --target local --source "$top/examples/train" --script train.py \
    --experiment quickstart --stream -- --epochs 20
echo
echo "\$ ctarget run show LATEST"
"$ct" run show "$("$ct" run list --experiment quickstart --output json |
    sed -n 's/^ *"id": "\([^"]*\)".*/\1/p' | head -n 1)"
