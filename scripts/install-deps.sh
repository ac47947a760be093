#!/bin/sh
# Install the Debian packages ctarget needs to build and to run its test suite.
# (clang and libclang-rt-14-dev, which has libFuzzer: fuzz/run.sh, the fuzzing step.)
# Uses sudo when not root.  Skips apt-get entirely when everything is already there.
set -eu
pkgs="build-essential autoconf automake libtool pkg-config
      libsqlite3-dev libjansson-dev libcurl4-openssl-dev libssl-dev libarchive-dev libyaml-dev
      libcunit1-dev python3 openssl binutils git
      libssh2-1-dev openssh-server openssh-client
      clang libclang-rt-14-dev
      slurm-wlm munge iproute2"
# Azure emulators' tests (Azurite and the official SDK run on node, installed with npm ci);
# a node that came some other way, with its own npm, is used as it is
command -v node >/dev/null 2>&1 || pkgs="$pkgs nodejs"
command -v npm >/dev/null 2>&1 || pkgs="$pkgs npm"
missing=""
# the Debian packaging check (tests/packaging/check.sh)
pkgs="$pkgs dpkg-dev debhelper lintian"
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
echo "ctarget: installing Debian packages:$missing" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
